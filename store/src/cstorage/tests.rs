use std::collections::HashMap;
use std::fs;
use std::path::Path;

use super::model::{self, build, layer_id, StoreFacts, View};
use super::write::sync;
use crate::digest::Digest;
use crate::meta::{ImageLayer, ImageRecord, LayerRecord, TagRecord};

/// Store facts from maps: layers present with their records, blob sizes.
#[derive(Default)]
struct FakeStore {
    layers: HashMap<Digest, LayerRecord>,
    blobs: HashMap<Digest, u64>,
}

impl StoreFacts for FakeStore {
    fn layer(&self, chain_id: &Digest) -> Option<LayerRecord> {
        self.layers.get(chain_id).cloned()
    }
    fn blob_size(&self, digest: &Digest) -> Option<u64> {
        self.blobs.get(digest).copied()
    }
    fn id_sets(&self, _: &Digest) -> Option<(Vec<u32>, Vec<u32>)> {
        None
    }
}

fn d(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

/// An image of `layers` (names of diff ids) under `manifest`/`config`,
/// with every layer and blob present in `facts`.
fn image(
    facts: &mut FakeStore,
    manifest: &str,
    config: &str,
    layers: &[&str],
    stored_at: u64,
) -> ImageRecord {
    let diff_ids: Vec<Digest> = layers.iter().map(|l| d(l)).collect();
    let chains = crate::digest::chain_ids(&diff_ids);
    let mut out = Vec::new();
    for (i, (diff_id, chain)) in diff_ids.iter().zip(&chains).enumerate() {
        let blob = d(&format!("blob-{}", layers[i]));
        facts.blobs.insert(blob, 10);
        facts.layers.insert(
            *chain,
            LayerRecord {
                diff_id: *diff_id,
                parent: i.checked_sub(1).map(|p| chains[p]),
                size: 100,
                file_bytes: 50,
                refs: 1,
            },
        );
        out.push(ImageLayer {
            digest: blob,
            diff_id: *diff_id,
            chain_id: *chain,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            compressed_size: 10,
            size: 100,
        });
    }
    facts.blobs.insert(d(manifest), 500);
    facts.blobs.insert(d(config), 300);
    ImageRecord {
        manifest: d(manifest),
        manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        manifest_size: 500,
        config: d(config),
        config_size: 300,
        index: None,
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: None,
        created: Some("2024-05-06T07:08:09Z".into()),
        layers: out,
        stored_at,
    }
}

fn tag(name: &str, img: &ImageRecord) -> (String, TagRecord) {
    (
        name.to_string(),
        TagRecord {
            image: img.manifest,
            repo_digest: None,
        },
    )
}

#[test]
fn images_share_layers_and_one_config_is_one_image() {
    let mut facts = FakeStore::default();
    let a = image(&mut facts, "m-a", "c-a", &["base", "app"], 1);
    let b = image(&mut facts, "m-b", "c-b", &["base", "tool"], 2);
    // The same config under another manifest (say, zstd instead of gzip).
    let a2 = image(&mut facts, "m-a2", "c-a", &["base", "app"], 3);
    let tags = vec![tag("x/a:1", &a), tag("x/b:1", &b), tag("x/a:zstd", &a2)];
    let view = build(&[a.clone(), b, a2.clone()], &tags, &facts);

    assert_eq!(view.images.len(), 2);
    let img_a = view
        .images
        .iter()
        .find(|i| i.entry.id == d("c-a").hex())
        .expect("image a");
    assert_eq!(
        img_a.entry.names,
        vec!["x/a:1".to_string(), "x/a:zstd".to_string()]
    );
    // The newer manifest is the image's `manifest`; both are kept.
    assert_eq!(img_a.big_data[0], ("manifest".to_string(), a2.manifest));
    let keys: Vec<&str> = img_a
        .entry
        .big_data_names
        .iter()
        .map(String::as_str)
        .collect();
    assert!(
        keys.contains(&format!("manifest-{}", a.manifest).as_str()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&format!("manifest-{}", a2.manifest).as_str()),
        "{keys:?}"
    );
    assert!(keys.contains(&d("c-a").to_string().as_str()), "{keys:?}");
    assert_eq!(img_a.entry.created, "2024-05-06T07:08:09Z");

    // base, app, tool: the base once, parents first.
    let ids: Vec<&str> = view.layers.iter().map(|l| l.entry.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let base = layer_id(None, &d("base"));
    assert_eq!(ids[0], base);
    for l in &view.layers[1..] {
        assert_eq!(l.entry.parent.as_deref(), Some(base.as_str()));
    }
    assert_eq!(
        img_a.entry.top_layer.as_deref(),
        Some(layer_id(Some(&base), &d("app")).as_str())
    );
}

#[test]
fn an_image_whose_layer_or_blob_is_gone_is_left_out() {
    let mut facts = FakeStore::default();
    let a = image(&mut facts, "m-a", "c-a", &["base", "app"], 1);
    let b = image(&mut facts, "m-b", "c-b", &["lone"], 1);
    let c = image(&mut facts, "m-c", "c-c", &["other"], 1);
    facts.layers.remove(&a.layers[1].chain_id);
    facts.blobs.remove(&c.config);
    let view = build(&[a, b.clone(), c], &[], &facts);
    let ids: Vec<&str> = view.images.iter().map(|i| i.entry.id.as_str()).collect();
    assert_eq!(ids, vec![b.config.hex()]);
    assert_eq!(view.layers.len(), 1, "only the kept image's layer");
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|e| {
            e.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn sync_writes_the_view_then_prunes_what_it_no_longer_holds() {
    let root = tempfile::tempdir().unwrap();
    let mut facts = FakeStore::default();
    let a = image(&mut facts, "m-a", "c-a", &["base", "app"], 1);
    let b = image(&mut facts, "m-b", "c-b", &["base", "tool"], 2);
    let both = build(
        &[a.clone(), b.clone()],
        &[tag("x/a:1", &a), tag("x/b:1", &b)],
        &facts,
    );
    let cs = root.path().join("containers-storage");

    assert!(
        sync(root.path(), &both, true).unwrap(),
        "no view yet: stale"
    );
    assert!(!cs.exists(), "a check writes nothing");
    assert!(sync(root.path(), &both, false).unwrap());
    assert!(
        !sync(root.path(), &both, true).unwrap(),
        "current after a sync"
    );
    assert!(
        !sync(root.path(), &both, false).unwrap(),
        "nothing to change twice"
    );
    let lock_before = fs::read(cs.join("overlay-images/images.lock")).unwrap();
    assert_eq!(lock_before.len(), 64, "a last-writer id");

    // Layer links: each id and chain id to lstore's folder, and `l`.
    let base_chain = a.layers[0].chain_id.hex();
    assert_eq!(
        fs::read_link(cs.join("overlay").join(layer_id(None, &d("base")))).unwrap(),
        Path::new(&format!("../../overlay2/{base_chain}"))
    );
    let app_id = layer_id(Some(&d("base").hex()), &d("app"));
    assert_eq!(
        fs::read_link(cs.join("overlay").join(&app_id)).unwrap(),
        Path::new(&format!("../../overlay2/{}", a.layers[1].chain_id.hex()))
    );
    assert_eq!(
        fs::read_link(cs.join("overlay/l")).unwrap(),
        Path::new("../../overlay2/l")
    );
    // Big data: links to the blobs, under containers/storage's names.
    let img_dir = cs.join("overlay-images").join(d("c-a").hex());
    assert_eq!(
        fs::read_link(img_dir.join("manifest")).unwrap(),
        Path::new(&format!("../../../blobs/sha256/{}", a.manifest.hex()))
    );
    assert_eq!(names(&img_dir).len(), 3);
    let images: Vec<model::ImageEntry> =
        serde_json::from_slice(&fs::read(cs.join("overlay-images/images.json")).unwrap()).unwrap();
    assert_eq!(images.len(), 2);

    // Without b: its image folder, its top layer's links go; the base stays.
    let only_a = build(std::slice::from_ref(&a), &[tag("x/a:1", &a)], &facts);
    assert!(sync(root.path(), &only_a, true).unwrap());
    assert!(sync(root.path(), &only_a, false).unwrap());
    assert_eq!(names(&cs.join("overlay-images")), {
        let mut v = vec![d("c-a").hex(), "images.json".into(), "images.lock".into()];
        v.sort();
        v
    });
    let tool_id = layer_id(Some(&d("base").hex()), &d("tool"));
    assert!(fs::symlink_metadata(cs.join("overlay").join(&tool_id)).is_err());
    assert!(fs::symlink_metadata(cs.join("overlay").join(layer_id(None, &d("base")))).is_ok());
    assert_ne!(
        fs::read(cs.join("overlay-images/images.lock")).unwrap(),
        lock_before,
        "a change gives the lock file a new last-writer id"
    );

    // An empty store empties the view and keeps the lock files.
    assert!(sync(root.path(), &View::default(), false).unwrap());
    assert_eq!(names(&cs.join("overlay")), vec!["l".to_string()]);
    assert_eq!(
        names(&cs.join("overlay-layers")),
        vec!["layers.json".to_string(), "layers.lock".to_string()]
    );
    assert_eq!(
        fs::read(cs.join("overlay-layers/layers.json")).unwrap(),
        b"[]"
    );
}

#[test]
fn sync_replaces_what_someone_else_put_in_its_place() {
    let root = tempfile::tempdir().unwrap();
    let mut facts = FakeStore::default();
    let a = image(&mut facts, "m-a", "c-a", &["base"], 1);
    let view = build(std::slice::from_ref(&a), &[tag("x/a:1", &a)], &facts);
    sync(root.path(), &view, false).unwrap();
    let cs = root.path().join("containers-storage");
    let link = cs.join("overlay").join(layer_id(None, &d("base")));
    fs::remove_file(&link).unwrap();
    fs::create_dir(&link).unwrap();
    fs::write(cs.join("overlay-images/images.json"), b"[{half").unwrap();
    fs::write(cs.join("overlay-images/stray"), b"x").unwrap();
    assert!(sync(root.path(), &view, true).unwrap());
    sync(root.path(), &view, false).unwrap();
    assert!(!sync(root.path(), &view, true).unwrap());
    assert!(fs::symlink_metadata(&link).unwrap().is_symlink());
    assert!(!cs.join("overlay-images/stray").exists());
}
