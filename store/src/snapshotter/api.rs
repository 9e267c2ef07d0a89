//! containerd's snapshots API (store/proto/containerd/snapshots.proto):
//! its messages, encoded with prost's field codecs, and the server side of
//! the service that tonic-prost-build generated from it.
//!
//! The messages are written here rather than derived: prost's derive
//! macro would change the build features of what RocksDB's bindings are
//! built with, and so rebuild RocksDB (see store/Cargo.toml).

#![allow(missing_docs)]

use std::collections::BTreeMap;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{skip_field, DecodeContext, WireType};
use prost::DecodeError;

/// Encoders per field kind, proto3 style (default scalars not sent).
mod fields {
    pub mod string {
        use super::super::*;
        use prost::encoding::string as s;
        pub fn encode(tag: u32, v: &String, buf: &mut impl BufMut) {
            if !v.is_empty() {
                s::encode(tag, v, buf)
            }
        }
        pub fn merge(
            w: WireType,
            v: &mut String,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), DecodeError> {
            s::merge(w, v, buf, ctx)
        }
        pub fn len(tag: u32, v: &String) -> usize {
            if v.is_empty() {
                0
            } else {
                s::encoded_len(tag, v)
            }
        }
    }
    pub mod strings {
        use super::super::*;
        use prost::encoding::string as s;
        pub fn encode(tag: u32, v: &[String], buf: &mut impl BufMut) {
            s::encode_repeated(tag, v, buf)
        }
        pub fn merge(
            w: WireType,
            v: &mut Vec<String>,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), DecodeError> {
            s::merge_repeated(w, v, buf, ctx)
        }
        pub fn len(tag: u32, v: &[String]) -> usize {
            s::encoded_len_repeated(tag, v)
        }
    }
    pub mod labels {
        use super::super::*;
        use prost::encoding::{btree_map as m, string as s};
        pub fn encode<B: BufMut>(tag: u32, v: &BTreeMap<String, String>, buf: &mut B) {
            m::encode(
                s::encode,
                s::encoded_len,
                s::encode,
                s::encoded_len,
                tag,
                v,
                buf,
            )
        }
        pub fn merge<B: Buf>(
            _w: WireType,
            v: &mut BTreeMap<String, String>,
            buf: &mut B,
            ctx: DecodeContext,
        ) -> Result<(), DecodeError> {
            m::merge(s::merge, s::merge, v, buf, ctx)
        }
        pub fn len(tag: u32, v: &BTreeMap<String, String>) -> usize {
            m::encoded_len(s::encoded_len, s::encoded_len, tag, v)
        }
    }
    pub mod message {
        use super::super::*;
        use prost::encoding::message as m;
        use prost::Message;
        pub fn encode<M: Message>(tag: u32, v: &Option<M>, buf: &mut impl BufMut) {
            if let Some(v) = v {
                m::encode(tag, v, buf)
            }
        }
        pub fn merge<M: Message + Default>(
            w: WireType,
            v: &mut Option<M>,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), DecodeError> {
            m::merge(w, v.get_or_insert_with(M::default), buf, ctx)
        }
        pub fn len<M: Message>(tag: u32, v: &Option<M>) -> usize {
            v.as_ref().map_or(0, |v| m::encoded_len(tag, v))
        }
    }
    pub mod messages {
        use super::super::*;
        use prost::encoding::message as m;
        use prost::Message;
        pub fn encode<M: Message>(tag: u32, v: &[M], buf: &mut impl BufMut) {
            m::encode_repeated(tag, v, buf)
        }
        pub fn merge<M: Message + Default>(
            w: WireType,
            v: &mut Vec<M>,
            buf: &mut impl Buf,
            ctx: DecodeContext,
        ) -> Result<(), DecodeError> {
            m::merge_repeated(w, v, buf, ctx)
        }
        pub fn len<M: Message>(tag: u32, v: &[M]) -> usize {
            m::encoded_len_repeated(tag, v)
        }
    }
    macro_rules! scalar {
        ($name:ident, $ty:ty, $codec:ident) => {
            pub mod $name {
                use super::super::*;
                use prost::encoding::$codec as c;
                pub fn encode(tag: u32, v: &$ty, buf: &mut impl BufMut) {
                    if *v != 0 {
                        c::encode(tag, v, buf)
                    }
                }
                pub fn merge(
                    w: WireType,
                    v: &mut $ty,
                    buf: &mut impl Buf,
                    ctx: DecodeContext,
                ) -> Result<(), DecodeError> {
                    c::merge(w, v, buf, ctx)
                }
                pub fn len(tag: u32, v: &$ty) -> usize {
                    if *v == 0 {
                        0
                    } else {
                        c::encoded_len(tag, v)
                    }
                }
            }
        };
    }
    scalar!(int64, i64, int64);
    scalar!(int32, i32, int32);
}

/// A message: its fields by tag, each with its Rust type and field kind.
macro_rules! message {
    ($name:ident { $($tag:literal => $field:ident: $ty:ty as $kind:ident),* $(,)? }) => {
        #[derive(Clone, PartialEq, Default, Debug)]
        pub struct $name {
            $(pub $field: $ty),*
        }
        impl prost::Message for $name {
            fn encode_raw(&self, buf: &mut impl BufMut) {
                $(fields::$kind::encode($tag, &self.$field, buf);)*
            }
            fn merge_field(
                &mut self,
                tag: u32,
                wire_type: WireType,
                buf: &mut impl Buf,
                ctx: DecodeContext,
            ) -> Result<(), DecodeError> {
                match tag {
                    $($tag => fields::$kind::merge(wire_type, &mut self.$field, buf, ctx),)*
                    _ => skip_field(wire_type, tag, buf, ctx),
                }
            }
            fn encoded_len(&self) -> usize {
                0 $(+ fields::$kind::len($tag, &self.$field))*
            }
            fn clear(&mut self) {
                *self = Self::default();
            }
        }
    };
}

// google.protobuf
message!(Timestamp { 1 => seconds: i64 as int64, 2 => nanos: i32 as int32 });
message!(FieldMask { 1 => paths: Vec<String> as strings });

// containerd.types
message!(Mount {
    1 => r#type: String as string,
    2 => source: String as string,
    3 => target: String as string,
    4 => options: Vec<String> as strings,
});

// containerd.services.snapshots.v1
message!(PrepareSnapshotRequest {
    1 => snapshotter: String as string,
    2 => key: String as string,
    3 => parent: String as string,
    4 => labels: BTreeMap<String, String> as labels,
});
message!(PrepareSnapshotResponse { 1 => mounts: Vec<Mount> as messages });
message!(ViewSnapshotRequest {
    1 => snapshotter: String as string,
    2 => key: String as string,
    3 => parent: String as string,
    4 => labels: BTreeMap<String, String> as labels,
});
message!(ViewSnapshotResponse { 1 => mounts: Vec<Mount> as messages });
message!(MountsRequest { 1 => snapshotter: String as string, 2 => key: String as string });
message!(MountsResponse { 1 => mounts: Vec<Mount> as messages });
message!(RemoveSnapshotRequest { 1 => snapshotter: String as string, 2 => key: String as string });
message!(CommitSnapshotRequest {
    1 => snapshotter: String as string,
    2 => name: String as string,
    3 => key: String as string,
    4 => labels: BTreeMap<String, String> as labels,
});
message!(StatSnapshotRequest { 1 => snapshotter: String as string, 2 => key: String as string });
message!(Info {
    1 => name: String as string,
    2 => parent: String as string,
    3 => kind: i32 as int32,
    4 => created_at: Option<Timestamp> as message,
    5 => updated_at: Option<Timestamp> as message,
    6 => labels: BTreeMap<String, String> as labels,
});
message!(StatSnapshotResponse { 1 => info: Option<Info> as message });
message!(UpdateSnapshotRequest {
    1 => snapshotter: String as string,
    2 => info: Option<Info> as message,
    3 => update_mask: Option<FieldMask> as message,
});
message!(UpdateSnapshotResponse { 1 => info: Option<Info> as message });
message!(ListSnapshotsRequest {
    1 => snapshotter: String as string,
    2 => filters: Vec<String> as strings,
});
message!(ListSnapshotsResponse { 1 => info: Vec<Info> as messages });
message!(UsageRequest { 1 => snapshotter: String as string, 2 => key: String as string });
message!(UsageResponse { 1 => size: i64 as int64, 2 => inodes: i64 as int64 });
message!(CleanupRequest { 1 => snapshotter: String as string });

/// `Info.kind` (enum Kind).
pub const KIND_VIEW: i32 = 1;
/// `Info.kind` (enum Kind).
pub const KIND_ACTIVE: i32 = 2;
/// `Info.kind` (enum Kind).
pub const KIND_COMMITTED: i32 = 3;

#[allow(clippy::all)]
mod generated {
    use super::*;
    include!("api/snapshots_server.rs");
}
pub use generated::snapshots_server;

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Bytes as Go's protobuf writes them for an Info (fields in tag
    /// order, defaults left out), decoded and encoded back unchanged.
    #[test]
    fn messages_round_trip_in_wire_format() {
        let info = Info {
            name: "n".into(),
            parent: String::new(),
            kind: KIND_COMMITTED,
            created_at: Some(Timestamp {
                seconds: 5,
                nanos: 0,
            }),
            updated_at: None,
            labels: BTreeMap::from([("k".to_string(), "v".to_string())]),
        };
        let bytes = info.encode_to_vec();
        assert_eq!(
            bytes,
            [
                0x0a, 1, b'n', // name
                0x18, 3, // kind
                0x22, 2, 0x08, 5, // created_at.seconds
                0x32, 6, 0x0a, 1, b'k', 0x12, 1, b'v', // labels
            ]
        );
        assert_eq!(Info::decode(bytes.as_slice()).unwrap(), info);
        let req = UpdateSnapshotRequest::decode(
            [
                0x12, 3, 0x0a, 1, b'x', 0x1a, 8, 0x0a, 6, b'l', b'a', b'b', b'e', b'l', b's', 0x7a,
                0,
            ]
            .as_slice(),
        )
        .unwrap();
        assert_eq!(req.info.unwrap().name, "x");
        assert_eq!(req.update_mask.unwrap().paths, ["labels"]);
    }
}
