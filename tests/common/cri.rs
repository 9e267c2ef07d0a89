//! A minimal CRI client (Debian ships no crictl): `ImageService/PullImage`
//! of `runtime.v1` (kubernetes/cri-api pkg/apis/runtime/v1/api.proto), as
//! the kubelet sends it, over containerd's unix socket.
//!
//! gRPC is spoken by hand over h2 (already built for hyper): one POST with
//! a length-prefixed protobuf message, the answer's message and its
//! `grpc-status` trailer. The two messages are encoded with prost's field
//! codecs, not its derive macro (which would change the features RocksDB's
//! bindings are built with; see store/Cargo.toml).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{decode_key, encode_key, encode_varint, skip_field, string, WireType};
use std::path::Path;
use std::time::Duration;

/// How long a pull may take before the test gives up.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

/// `PullImageRequest { image: ImageSpec { image } }`: field 1 of the
/// request is the ImageSpec, field 1 of ImageSpec its reference; auth (2)
/// and sandbox_config (3) are left out, as the kubelet does for a public
/// image pulled before its pod exists.
fn pull_image_request(reference: &str) -> Vec<u8> {
    let mut spec = Vec::new();
    string::encode(1, &reference.to_string(), &mut spec);
    let mut request = Vec::new();
    encode_key(1, WireType::LengthDelimited, &mut request);
    encode_varint(spec.len() as u64, &mut request);
    request.extend_from_slice(&spec);
    request
}

/// `PullImageResponse { image_ref (1) }`.
fn pull_image_response(mut buf: &[u8]) -> Result<String, String> {
    let mut image_ref = String::new();
    while buf.has_remaining() {
        let (tag, wire) = decode_key(&mut buf).map_err(|e| e.to_string())?;
        if tag == 1 {
            string::merge(wire, &mut image_ref, &mut buf, Default::default())
                .map_err(|e| e.to_string())?;
        } else {
            skip_field(wire, tag, &mut buf, Default::default()).map_err(|e| e.to_string())?;
        }
    }
    Ok(image_ref)
}

/// One unary gRPC call on the unix socket `socket`: the answer's message,
/// or `grpc-status: grpc-message` when it failed.
async fn unary(socket: &Path, method: &str, message: &[u8]) -> Result<Vec<u8>, String> {
    let io = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    let (client, connection) = h2::client::handshake(io)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.map_err(|e| format!("h2: {e}"))?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|e| format!("send: {e}"))?;
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(message.len() as u32);
    frame.extend_from_slice(message);
    send.send_data(frame.freeze(), true)
        .map_err(|e| format!("send data: {e}"))?;
    let response = response.await.map_err(|e| format!("response: {e}"))?;
    let (parts, mut body) = response.into_parts();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk: Bytes = chunk.map_err(|e| format!("body: {e}"))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| format!("trailers: {e}"))?;
    // A call that fails at once answers with headers only (no trailers).
    let status_of = |headers: &http::HeaderMap| {
        headers.get("grpc-status").map(|s| {
            let message = headers
                .get("grpc-message")
                .map(|m| m.to_str().unwrap_or("?").to_string())
                .unwrap_or_default();
            (s.to_str().unwrap_or("?").to_string(), message)
        })
    };
    let status = trailers
        .as_ref()
        .and_then(status_of)
        .or_else(|| status_of(&parts.headers))
        .ok_or_else(|| format!("no grpc-status (HTTP {})", parts.status))?;
    if status.0 != "0" {
        return Err(format!("grpc-status {}: {}", status.0, status.1));
    }
    if data.len() < 5 {
        return Err(format!("short answer ({} bytes)", data.len()));
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    if data[0] != 0 || data.len() != 5 + len {
        return Err(format!("bad frame ({} bytes, length {len})", data.len()));
    }
    Ok(data[5..].to_vec())
}

/// `/runtime.v1.ImageService/PullImage` of `reference` on containerd's
/// socket: the image id (`image_ref`) CRI answers, or the error.
pub fn pull_image(socket: &Path, reference: &str) -> Result<String, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let request = pull_image_request(reference);
    runtime.block_on(async {
        let call = unary(socket, "/runtime.v1.ImageService/PullImage", &request);
        let answer = tokio::time::timeout(PULL_TIMEOUT, call)
            .await
            .map_err(|_| format!("PullImage {reference}: no answer in {PULL_TIMEOUT:?}"))??;
        pull_image_response(&answer)
    })
}
