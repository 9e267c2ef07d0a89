//! `lstore serve`: skopeo copies images out of and into the store through
//! the distribution API; malformed and lying requests get the spec's error
//! codes and store nothing; a killed server leaves nothing gc and fsck
//! cannot put right.

mod common;

use common::checks::assert_matches_umoci;
use common::image::{layout_manifest_digest, write_oci_layout, Image, OCI_INDEX, OCI_MANIFEST};
use common::peers::{skopeo_copy, umoci_unpack};
use common::registry::{http_call, Response};
use common::scenes::{noise, small_app, small_base};
use common::serve::{raw_cut, Serve};
use common::tarball::sha256_digest;
use common::tree::{assert_same_tree, snapshot};
use common::{scratch, ImageBuilder, LayoutNames, Lstore};

fn small_image() -> Image {
    ImageBuilder::new()
        .layer(small_base())
        .layer(small_app("served"))
        .build()
}

/// A store holding `image` as `name`, loaded from a layout.
fn store_with(image: &Image, name: &str) -> Lstore {
    let store = Lstore::new();
    let work = scratch();
    let layout = work.path().join("layout");
    write_oci_layout(&layout, &[(image, LayoutNames::ref_name("v1"))]);
    store.load(&layout, Some(name));
    store
}

fn fsck_clean(store: &Lstore) {
    let out = store.ok(&["fsck", "--format", "json"]);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).expect("fsck json");
    assert_eq!(
        report["problems"].as_array().map(Vec::len),
        Some(0),
        "fsck: {report}"
    );
}

#[test]
fn skopeo_copies_an_image_out_of_serve() {
    let image = small_image();
    let name = "registry.example/team/app:v1";
    let store = store_with(&image, name);
    let serve = Serve::start(&store, &[]);
    let work = scratch();
    let out = work.path().join("out");
    skopeo_copy(
        &["--src-tls-verify=false"],
        &format!("docker://{}/team/app:v1", serve.addr()),
        &format!("oci:{}:v1", out.display()),
    );
    // The bytes as stored: same manifest, same blobs.
    let inspect = store.inspect(name);
    assert_eq!(
        layout_manifest_digest(&out),
        inspect["digest"].as_str().unwrap()
    );
    for (digest, bytes) in image.blobs() {
        let copied = std::fs::read(common::image::blob_path(&out, &digest)).unwrap();
        assert_eq!(copied, bytes, "blob {digest}");
    }
    // What umoci unpacks from it is what lstore mounts.
    let bundle = umoci_unpack(&out, "v1");
    assert_same_tree(
        &snapshot(&bundle.rootfs()),
        &common::checks::mounted_tree(&store, name),
        "served image unpacked by umoci vs lstore mount",
    );
    assert!(serve.stop().success(), "serve exits 0 on SIGTERM");
    assert!(
        common::lstore::list(&store.path("leases")).is_empty(),
        "no lease left"
    );
}

#[test]
fn skopeo_pushes_an_image_into_serve_and_gets_it_back() {
    let image = small_image();
    let store = Lstore::new();
    let serve = Serve::start(&store, &[]);
    let work = scratch();
    let layout = work.path().join("layout");
    write_oci_layout(&layout, &[(&image, LayoutNames::ref_name("v1"))]);
    skopeo_copy(
        &["--dest-tls-verify=false"],
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/pushed/app:v1", serve.addr()),
    );
    let name = format!("{}/pushed/app:v1", serve.addr());
    assert_eq!(store.listed_references(), vec![name.clone()]);
    let inspect = store.inspect(&name);
    assert_eq!(inspect["digest"], image.manifest_digest.as_str());
    assert_eq!(inspect["id"], image.config_digest.as_str());
    assert_matches_umoci(&store, &name, &image);
    // Served back with the same digests.
    let back = work.path().join("back");
    skopeo_copy(
        &["--src-tls-verify=false"],
        &format!("docker://{}/pushed/app:v1", serve.addr()),
        &format!("oci:{}:v1", back.display()),
    );
    assert_eq!(layout_manifest_digest(&back), image.manifest_digest);
    let tags = http_call(serve.addr(), "GET", "/v2/pushed/app/tags/list", &[], b"");
    assert_eq!(tags.json()["tags"], serde_json::json!(["v1"]));
    let catalog = http_call(serve.addr(), "GET", "/v2/_catalog", &[], b"");
    assert_eq!(
        catalog.json()["repositories"],
        serde_json::json!(["pushed/app"])
    );
    drop(serve);
    fsck_clean(&store);
}

#[test]
fn manifests_by_tag_and_digest_and_blob_ranges() {
    let image = small_image();
    let store = store_with(&image, "127.0.0.1:9/x/y:1");
    let serve = Serve::start(&store, &[]);
    let a = serve.addr();
    let by_tag = http_call(a, "GET", "/v2/x/y/manifests/1", &[], b"");
    assert_eq!(by_tag.status, 200);
    assert_eq!(by_tag.body, image.manifest);
    assert_eq!(by_tag.header("content-type"), Some(OCI_MANIFEST));
    assert_eq!(
        by_tag.header("docker-content-digest"),
        Some(image.manifest_digest.as_str())
    );
    let head = http_call(
        a,
        "HEAD",
        &format!("/v2/x/y/manifests/{}", image.manifest_digest),
        &[],
        b"",
    );
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(image.manifest.len().to_string().as_str())
    );
    let layer = &image.layers[1];
    let blob = format!("/v2/x/y/blobs/{}", layer.digest);
    let whole = http_call(a, "GET", &blob, &[], b"");
    assert_eq!(whole.status, 200);
    assert_eq!(sha256_digest(&whole.body), layer.digest);
    let part = http_call(a, "GET", &blob, &[("Range", "bytes=10-19")], b"");
    assert_eq!(part.status, 206);
    assert_eq!(part.body, &layer.blob[10..20]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 10-19/{}", layer.blob.len()).as_str())
    );
    let past_end = format!("bytes={}-", layer.blob.len());
    let past = http_call(a, "GET", &blob, &[("Range", &past_end)], b"");
    assert_eq!(past.status, 416);
    assert_eq!(past.error_code(), "RANGE_NOT_SATISFIABLE");
    // A Range that is not one byte range is ignored: the whole blob.
    let odd = http_call(a, "GET", &blob, &[("Range", "bytes=z-")], b"");
    assert_eq!(odd.status, 200);
    assert_eq!(odd.body, layer.blob);
}

#[test]
fn malformed_names_digests_and_unknown_things_get_the_specs_codes() {
    let store = store_with(&small_image(), "127.0.0.1:9/x/y:1");
    let serve = Serve::start(&store, &[]);
    let a = serve.addr();
    let get = |path: &str| http_call(a, "GET", path, &[], b"");
    let zeros = format!("sha256:{}", "0".repeat(64));
    for (path, status, code) in [
        ("/v2/Upper/manifests/1", 400, "NAME_INVALID"),
        ("/v2/x/../../etc/manifests/1", 400, "NAME_INVALID"),
        ("/v2/x//y/manifests/1", 400, "NAME_INVALID"),
        ("/v2/x%2fy/manifests/1", 400, "NAME_INVALID"),
        ("/v2/x/y/blobs/sha256:abc", 400, "DIGEST_INVALID"),
        (
            "/v2/x/y/blobs/sha256:../../../etc/passwd",
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/x/y/manifests/md5:abc", 400, "DIGEST_INVALID"),
        ("/v2/x/y/manifests/2", 404, "MANIFEST_UNKNOWN"),
        (
            &format!("/v2/x/y/manifests/{zeros}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (&format!("/v2/x/y/blobs/{zeros}"), 404, "BLOB_UNKNOWN"),
        ("/v2/no/such/tags/list", 404, "NAME_UNKNOWN"),
        (
            "/v2/x/y/blobs/uploads/0123456789abcdef0123456789abcdef",
            404,
            "BLOB_UPLOAD_UNKNOWN",
        ),
        ("/v2/x/y/tags/list?n=many", 400, "PAGINATION_NUMBER_INVALID"),
    ] {
        let r = get(path);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (status, code),
            "GET {path}"
        );
    }
    let base = get("/v2/");
    assert_eq!(base.status, 200);
    assert_eq!(
        base.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );
    // Referrers of anything: an index, possibly empty.
    let referrers = get(&format!("/v2/x/y/referrers/{zeros}"));
    assert_eq!(referrers.status, 200);
    assert_eq!(referrers.json()["manifests"], serde_json::json!([]));
}

#[test]
fn tags_and_catalog_page_with_n_and_last() {
    let store = store_with(&small_image(), "127.0.0.1:9/a/one:t1");
    for t in ["t2", "t3"] {
        store.ok(&[
            "tag",
            "127.0.0.1:9/a/one:t1",
            &format!("127.0.0.1:9/a/one:{t}"),
        ]);
    }
    store.ok(&["tag", "127.0.0.1:9/a/one:t1", "127.0.0.1:9/b/two:x"]);
    let serve = Serve::start(&store, &[]);
    let a = serve.addr();
    let first = http_call(a, "GET", "/v2/a/one/tags/list?n=2", &[], b"");
    assert_eq!(first.json()["tags"], serde_json::json!(["t1", "t2"]));
    assert_eq!(
        first.header("link"),
        Some("</v2/a/one/tags/list?n=2&last=t2>; rel=\"next\"")
    );
    let next = http_call(a, "GET", "/v2/a/one/tags/list?n=2&last=t2", &[], b"");
    assert_eq!(next.json()["tags"], serde_json::json!(["t3"]));
    assert_eq!(next.header("link"), None);
    let catalog = http_call(a, "GET", "/v2/_catalog?n=1", &[], b"");
    assert_eq!(catalog.json()["repositories"], serde_json::json!(["a/one"]));
    let rest = http_call(a, "GET", "/v2/_catalog?last=a/one", &[], b"");
    assert_eq!(rest.json()["repositories"], serde_json::json!(["b/two"]));
}

#[test]
fn read_only_refuses_every_write() {
    let image = small_image();
    let store = store_with(&image, "127.0.0.1:9/x/y:1");
    let serve = Serve::start(&store, &["--read-only"]);
    let a = serve.addr();
    let blob = b"blob";
    for (method, path) in [
        (
            "POST",
            format!("/v2/x/y/blobs/uploads/?digest={}", sha256_digest(blob)),
        ),
        ("PUT", "/v2/x/y/manifests/2".to_string()),
        (
            "DELETE",
            format!("/v2/x/y/manifests/{}", image.manifest_digest),
        ),
        ("DELETE", "/v2/x/y/manifests/1".to_string()),
    ] {
        let r = http_call(a, method, &path, &[], blob);
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (403, "DENIED"),
            "{method} {path}"
        );
    }
    assert_eq!(
        store.listed_references(),
        vec!["127.0.0.1:9/x/y:1".to_string()]
    );
    let get = http_call(a, "GET", "/v2/x/y/manifests/1", &[], b"");
    assert_eq!(get.status, 200);
}

/// Starts a chunked upload; returns its Location path.
fn start_upload(addr: &str, repo: &str) -> String {
    let r = http_call(
        addr,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "{r:?}");
    r.header("location").expect("Location").to_string()
}

#[test]
fn lying_uploads_are_refused_and_store_nothing() {
    let store = Lstore::new();
    let serve = Serve::start(&store, &[]);
    let a = serve.addr();
    let data = noise(50_000, 3);
    let digest = sha256_digest(&data);
    let other = sha256_digest(b"something else");
    let head_blob = |d: &str| http_call(a, "HEAD", &format!("/v2/r/blobs/{d}"), &[], b"").status;

    // Monolithic, with a digest the bytes do not have.
    let r = http_call(
        a,
        "POST",
        &format!("/v2/r/blobs/uploads/?digest={other}"),
        &[],
        &data,
    );
    r.assert_error(400, "DIGEST_INVALID");
    assert_eq!(head_blob(&digest), 404);
    assert_eq!(head_blob(&other), 404);

    // A chunk shorter than its Content-Range: the upload is dropped.
    let loc = start_upload(a, "r");
    let r = http_call(
        a,
        "PATCH",
        &loc,
        &[("Content-Range", "0-999")],
        &data[..500],
    );
    r.assert_error(400, "BLOB_UPLOAD_INVALID");
    let r = http_call(a, "GET", &loc, &[], b"");
    r.assert_error(404, "BLOB_UPLOAD_UNKNOWN");

    // Out of order: the second chunk does not start where the first ended.
    let loc = start_upload(a, "r");
    let r = http_call(
        a,
        "PATCH",
        &loc,
        &[("Content-Range", "0-999")],
        &data[..1000],
    );
    assert_eq!(r.status, 202);
    assert_eq!(r.header("range"), Some("0-999"));
    let r = http_call(
        a,
        "PATCH",
        &loc,
        &[("Content-Range", "2000-2999")],
        &data[2000..3000],
    );
    assert_eq!(r.status, 416);
    // The upload itself is still there, as it was.
    let r = http_call(a, "GET", &loc, &[], b"");
    assert_eq!((r.status, r.header("range")), (204, Some("0-999")));
    // Finished short of the blob: its digest is not the one claimed.
    let r = http_call(a, "PUT", &format!("{loc}?digest={digest}"), &[], b"");
    r.assert_error(400, "DIGEST_INVALID");
    assert_eq!(head_blob(&digest), 404);

    // A chunk cut by a dropped connection: the upload is dropped.
    let loc = start_upload(a, "r");
    raw_cut(
        a,
        &format!("PATCH {loc} HTTP/1.1\r\nHost: x"),
        5000,
        &data[..100],
    );
    let r = http_call(a, "GET", &loc, &[], b"");
    r.assert_error(404, "BLOB_UPLOAD_UNKNOWN");

    // A Content-Range ending at the largest number is refused, and the
    // upload stays as it was (its length would not fit in 64 bits).
    let loc = start_upload(a, "r");
    let r = http_call(
        a,
        "PATCH",
        &loc,
        &[("Content-Range", "0-18446744073709551615")],
        b"abc",
    );
    assert_eq!(r.status, 416, "{r:?}");
    let r = http_call(a, "GET", &loc, &[], b"");
    assert_eq!((r.status, r.header("range")), (204, Some("0-0")));

    // Cancelling: another repository's upload or an unknown id is
    // BLOB_UPLOAD_UNKNOWN; the owner's cancel removes it.
    let other_repo = loc.replacen("/v2/r/", "/v2/q/", 1);
    let r = http_call(a, "DELETE", &other_repo, &[], b"");
    r.assert_error(404, "BLOB_UPLOAD_UNKNOWN");
    let unknown = "/v2/r/blobs/uploads/00000000000000000000000000000000";
    let r = http_call(a, "DELETE", unknown, &[], b"");
    r.assert_error(404, "BLOB_UPLOAD_UNKNOWN");
    let r = http_call(a, "DELETE", &loc, &[], b"");
    assert_eq!(r.status, 204, "{r:?}");
    let r = http_call(a, "GET", &loc, &[], b"");
    assert_eq!(r.status, 404);

    // A bad digest in the query is refused before anything is read.
    let r = http_call(
        a,
        "POST",
        "/v2/r/blobs/uploads/?digest=sha256:xyz",
        &[],
        &data,
    );
    r.assert_error(400, "DIGEST_INVALID");

    assert!(store.images().is_empty());
    drop(serve);
    fsck_clean(&store);
    assert!(
        store.blobs().is_empty(),
        "no blob kept: {:?}",
        store.blobs()
    );
}

/// Pushes every blob of `image` (monolithic uploads) to `repo`.
fn push_blobs(addr: &str, repo: &str, image: &Image) {
    for (digest, bytes) in image.blobs() {
        if digest == image.manifest_digest {
            continue;
        }
        let r = http_call(
            addr,
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
            &[],
            bytes,
        );
        assert_eq!(r.status, 201, "upload {digest}: {r:?}");
    }
}

fn put_manifest(
    addr: &str,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> Response {
    http_call(
        addr,
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", media_type)],
        body,
    )
}

#[test]
fn lying_manifests_are_refused_and_store_nothing() {
    let image = small_image();
    let store = Lstore::new();
    let serve = Serve::start(&store, &[]);
    let a = serve.addr();

    // Blobs not uploaded.
    let r = put_manifest(a, "m", "v1", OCI_MANIFEST, &image.manifest);
    r.assert_error(400, "MANIFEST_BLOB_UNKNOWN");

    push_blobs(a, "m", &image);
    // A layer size that is not the blob's.
    let mut lying: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
    let size = lying["layers"][0]["size"].as_u64().unwrap();
    lying["layers"][0]["size"] = serde_json::json!(size + 1);
    let r = put_manifest(
        a,
        "m",
        "v1",
        OCI_MANIFEST,
        &serde_json::to_vec(&lying).unwrap(),
    );
    r.assert_error(400, "SIZE_INVALID");
    // A digest in the path that is not the body's.
    let r = put_manifest(a, "m", &sha256_digest(b"x"), OCI_MANIFEST, &image.manifest);
    r.assert_error(400, "DIGEST_INVALID");
    // Not JSON.
    let r = put_manifest(a, "m", "v1", OCI_MANIFEST, b"{not json");
    r.assert_error(400, "MANIFEST_INVALID");
    // Too large: refused from its Content-Length, and when streamed.
    let big = vec![b' '; (4 << 20) + 1];
    let r = put_manifest(a, "m", "v1", OCI_MANIFEST, &big);
    r.assert_error(413, "SIZE_INVALID");
    let mut chunked = Vec::new();
    for piece in big.chunks(1 << 20) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = http_call(
        a,
        "PUT",
        "/v2/m/manifests/v1",
        &[
            ("Content-Type", OCI_MANIFEST),
            ("Transfer-Encoding", "chunked"),
        ],
        &chunked,
    );
    r.assert_error(413, "SIZE_INVALID");
    assert!(store.images().is_empty());

    // The true manifest is then accepted, by tag, and served back.
    let r = put_manifest(a, "m", "v1", OCI_MANIFEST, &image.manifest);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        r.header("docker-content-digest"),
        Some(image.manifest_digest.as_str())
    );
    assert_eq!(store.listed_references(), vec![format!("{a}/m:v1")]);

    // An index whose descriptor of that manifest lies about its size or
    // its media type is refused, and nothing more is listed.
    let child = |size: usize, media_type: &str| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{
                "mediaType": media_type,
                "digest": image.manifest_digest,
                "size": size,
                "platform": {"os": "linux", "architecture": "amd64"},
            }],
        }))
        .unwrap()
    };
    let len = image.manifest.len();
    let r = put_manifest(a, "m", "multi", OCI_INDEX, &child(len + 1000, OCI_MANIFEST));
    r.assert_error(400, "SIZE_INVALID");
    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    let r = put_manifest(a, "m", "multi", OCI_INDEX, &child(len, docker));
    r.assert_error(400, "MANIFEST_INVALID");
    assert_eq!(store.listed_references(), vec![format!("{a}/m:v1")]);
    // The true descriptor is accepted.
    let r = put_manifest(a, "m", "multi", OCI_INDEX, &child(len, OCI_MANIFEST));
    assert_eq!(r.status, 201, "{r:?}");
    drop(serve);
    fsck_clean(&store);
}

#[test]
fn uploaded_blobs_outlive_gc_while_serve_runs_and_deletes_remove_images() {
    let image = small_image();
    let store = Lstore::new();
    let serve = Serve::start(&store, &[]);
    let a = serve.addr();
    push_blobs(a, "g", &image);
    // No manifest names them yet: serve's lease keeps them from gc.
    store.ok(&["gc"]);
    let r = put_manifest(a, "g", "v1", OCI_MANIFEST, &image.manifest);
    assert_eq!(r.status, 201, "{r:?}");
    // Cross-repository mount of a blob the store has.
    let layer = &image.layers[0].digest;
    let r = http_call(
        a,
        "POST",
        &format!("/v2/other/blobs/uploads/?mount={layer}&from=g"),
        &[],
        b"",
    );
    assert_eq!(r.status, 201);
    let unknown = sha256_digest(b"nowhere");
    let r = http_call(
        a,
        "POST",
        &format!("/v2/other/blobs/uploads/?mount={unknown}&from=g"),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "an unknown mount starts an upload");
    // DELETE by tag, then the image is gone.
    let r = http_call(a, "DELETE", "/v2/g/manifests/v1", &[], b"");
    assert_eq!(r.status, 202, "{r:?}");
    assert!(store.images().is_empty());
    let r = http_call(a, "GET", "/v2/g/manifests/v1", &[], b"");
    assert_eq!(r.status, 404);
    // Pushed again by digest (untagged), then deleted by digest. The
    // delete freed the blobs no upload waits for: they come again.
    push_blobs(a, "g", &image);
    let r = put_manifest(
        a,
        "g",
        &image.manifest_digest,
        OCI_MANIFEST,
        &image.manifest,
    );
    assert_eq!(r.status, 201, "{r:?}");
    let r = http_call(
        a,
        "GET",
        &format!("/v2/g/manifests/{}", image.manifest_digest),
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
    let r = http_call(
        a,
        "DELETE",
        &format!("/v2/g/manifests/{}", image.manifest_digest),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "{r:?}");
    assert!(store.images().is_empty());
    assert!(serve.stop().success());
    store.ok(&["gc"]);
    assert!(
        store.blobs().is_empty(),
        "gc took what serve held: {:?}",
        store.blobs()
    );
    fsck_clean(&store);
}

#[test]
fn gc_beside_serve_frees_the_blobs_of_a_manifest_deleted_through_the_api() {
    let image = small_image();
    let store = Lstore::new();
    let serve = Serve::start(&store, &[]);
    let a = serve.addr();
    push_blobs(a, "d", &image);
    let r = put_manifest(a, "d", "v1", OCI_MANIFEST, &image.manifest);
    assert_eq!(r.status, 201, "{r:?}");
    // A mount for a manifest that arrives: held until it does.
    let layer = &image.layers[0].digest;
    let r = http_call(
        a,
        "POST",
        &format!("/v2/e/blobs/uploads/?mount={layer}&from=d"),
        &[],
        b"",
    );
    assert_eq!(r.status, 201, "{r:?}");
    let r = put_manifest(a, "e", "v1", OCI_MANIFEST, &image.manifest);
    assert_eq!(r.status, 201, "{r:?}");
    for path in ["/v2/d/manifests/v1", "/v2/e/manifests/v1"] {
        let r = http_call(a, "DELETE", path, &[], b"");
        assert_eq!(r.status, 202, "{r:?}");
    }
    assert!(store.images().is_empty());
    // serve still runs: its lease holds nothing a stored manifest named.
    store.ok(&["gc"]);
    assert!(
        store.blobs().is_empty(),
        "serve kept deleted blobs from gc: {:?}",
        store.blobs()
    );
    fsck_clean(&store);
    drop(serve);
}

#[test]
fn a_blob_being_sent_survives_rmi_and_gc() {
    // Large enough that the response cannot sit whole in socket buffers.
    let big = {
        let mut t = common::TarBuilder::new();
        t.file("big", noise(24 << 20, 9));
        t.layer(common::Compression::None)
    };
    let image = ImageBuilder::new().layer(big.clone()).build();
    let name = "127.0.0.1:9/big:1";
    let store = store_with(&image, name);
    let serve = Serve::start(&store, &[]);
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(serve.addr()).unwrap();
    write!(
        stream,
        "GET /v2/big/blobs/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        big.digest
    )
    .unwrap();
    let mut first = vec![0u8; 4096];
    stream.read_exact(&mut first).unwrap();
    store.ok(&["rmi", name]);
    store.ok(&["gc"]);
    assert!(!store
        .blobs()
        .contains(&big.digest["sha256:".len()..].to_string()));
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    first.extend_from_slice(&rest);
    let split = first.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        sha256_digest(&first[split..]),
        big.digest,
        "the whole blob arrived"
    );
}

#[test]
fn a_killed_serve_leaves_uploads_that_gc_removes() {
    let store = Lstore::new();
    let mut serve = Serve::start(&store, &[]);
    let a = serve.addr().to_string();
    let loc = start_upload(&a, "k");
    let r = http_call(&a, "PATCH", &loc, &[], &noise(100_000, 5));
    assert_eq!(r.status, 202);
    assert!(!store.unfinished().is_empty(), "the upload is in ingest/");
    serve.kill();
    assert!(store.images().is_empty(), "nothing half-stored is listed");
    fsck_clean(&store);
    store.ok(&["gc"]);
    assert!(
        store.unfinished().is_empty(),
        "left: {:?}",
        store.unfinished()
    );
    assert!(store.blobs().is_empty());
}

#[test]
fn serve_refuses_unsafe_settings() {
    let store = Lstore::new();
    let e = store.fails(&["serve", "--addr", "0.0.0.0:0"]);
    assert!(e.contains("without TLS"), "{e}");
    let e = store.fails(&["serve", "--addr", "127.0.0.1:0", "--namespace", "bad host"]);
    assert!(e.contains("registry host"), "{e}");
    let work = scratch();
    let htpasswd = work.path().join("htpasswd");
    std::fs::write(&htpasswd, "alice:{SHA}abc\n").unwrap();
    let e = store.fails(&[
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--htpasswd",
        htpasswd.to_str().unwrap(),
    ]);
    assert!(e.contains("bcrypt"), "{e}");
    // Said explicitly, any address is served.
    let serve = Serve::start_args(&store, &["serve", "--addr", "0.0.0.0:0", "--insecure"]);
    assert!(serve.addr().starts_with("0.0.0.0:"));
}

#[test]
fn htpasswd_guards_every_endpoint() {
    let store = store_with(&small_image(), "127.0.0.1:9/x:1");
    let work = scratch();
    let htpasswd = common::registry::make_htpasswd(work.path(), "alice", "s3cret");
    let serve = Serve::start(&store, &["--htpasswd", htpasswd.to_str().unwrap()]);
    let a = serve.addr();
    for path in ["/v2/", "/v2/x/manifests/1", "/v2/_catalog"] {
        let r = http_call(a, "GET", path, &[], b"");
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (401, "UNAUTHORIZED"),
            "{path}"
        );
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"lstore\""));
    }
    let wrong = common::registry::basic_auth("alice", "nope");
    let r = http_call(a, "GET", "/v2/", &[("Authorization", &wrong)], b"");
    assert_eq!(r.status, 401);
    let right = common::registry::basic_auth("alice", "s3cret");
    let r = http_call(
        a,
        "GET",
        "/v2/x/manifests/1",
        &[("Authorization", &right)],
        b"",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn pull_through_pulls_a_missing_image_once_for_concurrent_requests() {
    let image = small_image();
    let registry = common::registry::Registry::start();
    registry.upload("up/app", "v1", &image);
    let proxy = common::registry::Proxy::pass(&registry.host());
    let store = Lstore::new();
    let serve = Serve::start(&store, &["--upstream", &proxy.host()]);
    let a = serve.addr().to_string();
    let answers: Vec<Response> = std::thread::scope(|s| {
        let asks: Vec<_> = (0..4)
            .map(|_| s.spawn(|| http_call(&a, "GET", "/v2/up/app/manifests/v1", &[], b"")))
            .collect();
        asks.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for r in &answers {
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body, image.manifest);
    }
    assert_eq!(proxy.manifest_gets(), 1, "one pull for all four requests");
    assert_eq!(
        store.listed_references(),
        vec![format!("{}/up/app:v1", proxy.host())]
    );
    // Served from the store from now on, blobs included.
    let layer = &image.layers[0];
    let r = http_call(
        &a,
        "GET",
        &format!("/v2/up/app/blobs/{}", layer.digest),
        &[],
        b"",
    );
    assert_eq!(r.body, layer.blob);
    // What the upstream lacks is a miss.
    let r = http_call(&a, "GET", "/v2/up/app/manifests/v2", &[], b"");
    r.assert_error(404, "MANIFEST_UNKNOWN");
    assert!(store.listed_references().len() == 1);
    // A client's `ns` naming a host the operator did not name is never
    // pulled from (the server's credentials would go there).
    registry.upload("up/app", "v3", &image);
    let other = common::registry::Proxy::pass(&registry.host());
    let r = http_call(
        &a,
        "GET",
        &format!("/v2/up/app/manifests/v3?ns={}", other.host()),
        &[],
        b"",
    );
    r.assert_error(404, "MANIFEST_UNKNOWN");
    assert_eq!(
        other.manifest_gets(),
        0,
        "nothing asked of the unnamed host"
    );
    assert!(store.listed_references().len() == 1);
}

#[test]
fn a_multi_platform_index_pushed_by_skopeo_is_served_back() {
    let here = small_image();
    let other_arch = if common::image::host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    };
    let there = ImageBuilder::new()
        .platform("linux", other_arch)
        .layer(small_base())
        .layer(small_app("elsewhere"))
        .build();
    let work = scratch();
    let layout = work.path().join("multi");
    common::image::write_oci_layout_multi_platform(
        &layout,
        &[&here, &there],
        LayoutNames::ref_name("v1"),
    );
    let store = Lstore::new();
    let serve = Serve::start(&store, &[]);
    skopeo_copy(
        &["--all", "--dest-tls-verify=false"],
        &format!("oci:{}:v1", layout.display()),
        &format!("docker://{}/multi/app:v1", serve.addr()),
    );
    let name = format!("{}/multi/app:v1", serve.addr());
    assert!(store.listed_references().contains(&name));
    // The tag names this host's image...
    assert_eq!(
        store.inspect(&name)["digest"],
        here.manifest_digest.as_str()
    );
    assert_matches_umoci(&store, &name, &here);
    // ...and serves the index; skopeo copies every platform back.
    let back = work.path().join("back");
    skopeo_copy(
        &["--all", "--src-tls-verify=false"],
        &format!("docker://{}/multi/app:v1", serve.addr()),
        &format!("oci:{}:v1", back.display()),
    );
    // The index as pushed, byte for byte.
    let pushed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let index = pushed["manifests"][0]["digest"].as_str().unwrap();
    let served = http_call(serve.addr(), "GET", "/v2/multi/app/manifests/v1", &[], b"");
    assert_eq!(served.header("docker-content-digest"), Some(index));
    assert_eq!(
        served.body,
        std::fs::read(common::image::blob_path(&layout, index)).unwrap()
    );
    for image in [&here, &there] {
        let copied =
            std::fs::read(common::image::blob_path(&back, &image.manifest_digest)).unwrap();
        assert_eq!(copied, image.manifest);
    }
    drop(serve);
    fsck_clean(&store);
}

#[test]
fn an_upload_in_progress_survives_gc_and_sigterm_ends_serve_cleanly() {
    let store = Lstore::new();
    let serve = Serve::start(&store, &[]);
    let a = serve.addr().to_string();
    let data = noise(200_000, 8);
    let digest = sha256_digest(&data);
    let loc = start_upload(&a, "u");
    let r = http_call(&a, "PATCH", &loc, &[], &data[..100_000]);
    assert_eq!(r.status, 202);
    // gc beside serve leaves the live upload alone.
    store.ok(&["gc"]);
    let r = http_call(&a, "PATCH", &loc, &[], &data[100_000..]);
    assert_eq!((r.status, r.header("range")), (202, Some("0-199999")));
    let r = http_call(&a, "PUT", &format!("{loc}?digest={digest}"), &[], b"");
    assert_eq!(r.status, 201, "{r:?}");
    let r = http_call(&a, "HEAD", &format!("/v2/u/blobs/{digest}"), &[], b"");
    assert_eq!(
        (r.status, r.header("content-length")),
        (200, Some("200000"))
    );
    // An upload left open when serve is told to stop goes with it.
    let open = start_upload(&a, "u");
    assert_eq!(http_call(&a, "PATCH", &open, &[], &data).status, 202);
    assert!(serve.stop().success(), "serve exits 0 on SIGTERM");
    assert!(
        store.unfinished().is_empty(),
        "left: {:?}",
        store.unfinished()
    );
    assert!(common::lstore::list(&store.path("leases")).is_empty());
}

#[test]
fn ns_and_namespace_choose_among_hosts_sharing_a_name() {
    let first = small_image();
    let second = ImageBuilder::new()
        .layer(small_base())
        .layer(small_app("second"))
        .build();
    let store = store_with(&first, "a.example/lib/x:1");
    let work = scratch();
    let layout = work.path().join("second");
    write_oci_layout(&layout, &[(&second, LayoutNames::ref_name("v1"))]);
    store.load(&layout, Some("b.example/lib/x:1"));
    let serve = Serve::start(&store, &["--namespace", "b.example"]);
    let a = serve.addr();
    let digest_of = |path: &str| {
        let r = http_call(a, "GET", path, &[], b"");
        assert_eq!(r.status, 200, "{path}: {r:?}");
        r.header("docker-content-digest").unwrap().to_string()
    };
    assert_eq!(digest_of("/v2/lib/x/manifests/1"), second.manifest_digest);
    assert_eq!(
        digest_of("/v2/lib/x/manifests/1?ns=a.example"),
        first.manifest_digest
    );
    // An ns that has no such image leaves the order as it was.
    assert_eq!(
        digest_of("/v2/lib/x/manifests/1?ns=c.example"),
        second.manifest_digest
    );
}

#[test]
fn deletes_through_the_api_reach_only_pushed_and_delegated_images() {
    let image = small_image();
    let store = store_with(&image, "a.example/lib/x:1");
    let serve = Serve::start(&store, &[]);
    let a = serve.addr();
    // Served, but a copy of another registry's image: not the API's to
    // remove (distribution's pull-through cache answers the same).
    let r = http_call(a, "GET", "/v2/lib/x/manifests/1", &[], b"");
    assert_eq!(r.status, 200, "{r:?}");
    let by_digest = format!("/v2/lib/x/manifests/{}", image.manifest_digest);
    for path in ["/v2/lib/x/manifests/1", by_digest.as_str()] {
        http_call(a, "DELETE", path, &[], b"").assert_error(405, "UNSUPPORTED");
    }
    assert_eq!(store.listed_references(), vec!["a.example/lib/x:1"]);
    // A push under the same name wins the tag and is the client's to
    // delete; the other registry's image stays.
    push_blobs(a, "lib/x", &image);
    let r = put_manifest(a, "lib/x", "1", OCI_MANIFEST, &image.manifest);
    assert_eq!(r.status, 201, "{r:?}");
    let r = http_call(a, "DELETE", &by_digest, &[], b"");
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(store.listed_references(), vec!["a.example/lib/x:1"]);
    drop(serve);
    // A host the operator delegates with --namespace is the API's.
    let serve = Serve::start(&store, &["--namespace", "a.example"]);
    let r = http_call(serve.addr(), "DELETE", "/v2/lib/x/manifests/1", &[], b"");
    assert_eq!(r.status, 202, "{r:?}");
    assert!(store.images().is_empty());
}

#[test]
fn tags_and_removals_by_the_cli_are_served_on_the_next_request() {
    let image = small_image();
    let store = store_with(&image, "a.example/lib/x:1");
    let serve = Serve::start(&store, &[]);
    let a = serve.addr();
    let status = |path: &str| http_call(a, "GET", path, &[], b"").status;
    assert_eq!(status("/v2/lib/x/manifests/1"), 200);
    assert_eq!(status("/v2/lib/x/manifests/2"), 404);
    store.ok(&["tag", "a.example/lib/x:1", "a.example/lib/x:2"]);
    assert_eq!(status("/v2/lib/x/manifests/2"), 200);
    let r = http_call(a, "GET", "/v2/lib/x/tags/list", &[], b"");
    assert_eq!(r.json()["tags"], serde_json::json!(["1", "2"]));
    store.ok(&["rmi", "a.example/lib/x:1"]);
    assert_eq!(status("/v2/lib/x/manifests/1"), 404);
    store.ok(&["rmi", "a.example/lib/x:2"]);
    assert_eq!(status("/v2/lib/x/manifests/2"), 404);
    assert_eq!(
        status(&format!("/v2/lib/x/manifests/{}", image.manifest_digest)),
        404
    );
    let r = http_call(a, "GET", "/v2/_catalog", &[], b"");
    assert_eq!(r.json()["repositories"], serde_json::json!([]));
}

#[test]
fn abandoned_uploads_are_swept_without_waiting_for_another_upload() {
    let store = Lstore::new();
    let serve = Serve::start(&store, &["--upload-timeout", "1"]);
    let a = serve.addr();
    let loc = start_upload(a, "s");
    let r = http_call(a, "PATCH", &loc, &[], &noise(10_000, 3));
    assert_eq!(r.status, 202, "{r:?}");
    assert!(!store.unfinished().is_empty(), "the upload is in ingest/");
    // No request comes: the sweep alone drops the upload and its file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !store.unfinished().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        store.unfinished().is_empty(),
        "left: {:?}",
        store.unfinished()
    );
    http_call(a, "GET", &loc, &[], b"").assert_error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn a_body_that_stalls_is_cut_after_body_timeout() {
    use std::io::{Read, Write};
    let store = Lstore::new();
    let serve = Serve::start(&store, &["--body-timeout", "1"]);
    let a = serve.addr();
    let loc = start_upload(a, "b");
    let mut stream = std::net::TcpStream::connect(a).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nonly this"
    )
    .unwrap();
    // The connection stays open, the rest never comes: serve answers.
    let mut answer = vec![0u8; 512];
    let n = stream.read(&mut answer).expect("an answer before 30 s");
    let head = String::from_utf8_lossy(&answer[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head.contains("BLOB_UPLOAD_INVALID"), "{head}");
    http_call(a, "GET", &loc, &[], b"").assert_error(404, "BLOB_UPLOAD_UNKNOWN");
    let bad = store.fails(&["serve", "--upload-timeout", "0"]);
    assert!(bad.contains("upload-timeout"), "{bad}");
}
