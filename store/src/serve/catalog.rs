//! What the store holds, seen as registry repositories: a store tag
//! `HOST/PATH:TAG` is served as `PATH:TAG`, and when several hosts share
//! PATH:TAG the naming preferences decide which one is meant.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::digest::Digest;
use crate::error::Result;
use crate::meta::{ImageRecord, Meta, TagRecord};
use crate::reference::{Reference, DOCKER_HUB_DOMAIN};
use crate::store::Store;

/// The hosts that win when several registries' images share PATH:TAG, in
/// order: containerd's `?ns=`, the `--namespace` hosts, the server's own
/// address, the upstream, `docker.io`. Hosts in none of these come last,
/// in name order, so that an image is served whatever registry it came from.
#[derive(Debug, Clone, Default)]
pub struct HostOrder {
    pub hosts: Vec<String>,
}

impl HostOrder {
    pub fn new(
        ns: Option<&str>,
        namespaces: &[String],
        own: &str,
        upstream: Option<&str>,
    ) -> HostOrder {
        let mut hosts: Vec<String> = Vec::new();
        let mut push = |h: &str| {
            let h = normalise_host(h);
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        };
        if let Some(ns) = ns {
            push(ns);
        }
        for n in namespaces {
            push(n);
        }
        push(own);
        if let Some(u) = upstream {
            push(u);
        }
        push(DOCKER_HUB_DOMAIN);
        HostOrder { hosts }
    }

    fn rank(&self, domain: &str) -> usize {
        self.hosts
            .iter()
            .position(|h| h == domain)
            .unwrap_or(self.hosts.len())
    }
}

/// Docker Hub's other spellings are the store's `docker.io`.
pub fn normalise_host(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_DOMAIN.to_string(),
        h => h.to_string(),
    }
}

/// A manifest or index the server can send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub digest: Digest,
    /// Known for manifests (recorded); for an index, read from the blob.
    pub media_type: Option<String>,
    /// The platform manifest to send instead of an index to a client that
    /// does not accept indexes.
    pub platform_manifest: Option<(Digest, String)>,
}

/// A snapshot of the store's tags and images, read in one short session.
pub struct Catalog {
    tags: Vec<(Reference, TagRecord)>,
    images: HashMap<Digest, ImageRecord>,
}

/// The catalog kept between requests: read again only when the store's
/// generation marker changed (a push or delete of this server, or any CLI
/// command that changed tags or images), so a manifest request costs one
/// small file read instead of opening the database.
#[derive(Default)]
pub struct CatalogCache {
    kept: Mutex<Option<(String, Arc<Catalog>)>>,
    /// Catalogs read from the database so far.
    loads: AtomicU64,
}

impl CatalogCache {
    /// The store's catalog as it is now. Blocking.
    pub fn get(&self, store: &Store) -> Result<Arc<Catalog>> {
        if let Some(now) = store.generation() {
            if let Ok(kept) = self.kept.lock() {
                if let Some((_, catalog)) = kept.as_ref().filter(|(g, _)| *g == now) {
                    return Ok(catalog.clone());
                }
            }
        }
        // The marker read in the session that reads the records: the two
        // agree, whatever another process writes meanwhile.
        let (generation, catalog) =
            store.read_session(|meta| Ok((store.generation(), Catalog::read(meta)?)))?;
        self.loads.fetch_add(1, Ordering::Relaxed);
        let catalog = Arc::new(catalog);
        // A store no batch has marked yet is read every time.
        if let (Some(g), Ok(mut kept)) = (generation, self.kept.lock()) {
            *kept = Some((g, catalog.clone()));
        }
        Ok(catalog)
    }

    #[cfg(test)]
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }
}

impl Catalog {
    fn read(meta: &Meta) -> Result<Catalog> {
        let tags = meta
            .tags()?
            .into_iter()
            .filter_map(|(name, t)| Reference::parse(&name).ok().map(|r| (r, t)))
            .collect();
        let images = meta
            .images()?
            .into_iter()
            .map(|i| (i.manifest, i))
            .collect();
        Ok(Catalog { tags, images })
    }

    #[cfg(test)]
    pub fn from_parts(tags: Vec<(Reference, TagRecord)>, images: Vec<ImageRecord>) -> Catalog {
        Catalog {
            tags,
            images: images.into_iter().map(|i| (i.manifest, i)).collect(),
        }
    }

    /// Whether store reference `r` lives at repository `path` of the API
    /// (`debian` and `library/debian` both name `docker.io/library/debian`).
    fn in_repository(r: &Reference, path: &str) -> bool {
        r.path() == path
            || (r.domain() == DOCKER_HUB_DOMAIN
                && !path.contains('/')
                && r.path().strip_prefix("library/") == Some(path))
    }

    /// The store tag served as `path:tag`: of the hosts that have it, the
    /// first in `order`.
    fn best_tag(
        &self,
        path: &str,
        tag: &str,
        order: &HostOrder,
    ) -> Option<&(Reference, TagRecord)> {
        self.tags
            .iter()
            .filter(|(r, t)| {
                r.tag() == Some(tag)
                    && Self::in_repository(r, path)
                    && self.images.contains_key(&t.image)
            })
            .min_by(|(a, _), (b, _)| {
                (order.rank(a.domain()), a.domain()).cmp(&(order.rank(b.domain()), b.domain()))
            })
    }

    /// What `path:tag` serves.
    pub fn resolve_tag(&self, path: &str, tag: &str, order: &HostOrder) -> Option<Document> {
        let (_, rec) = self.best_tag(path, tag, order)?;
        let img = self.images.get(&rec.image)?;
        match img.index {
            // Pulled (or pushed) through an index: clients choose their
            // platform from it.
            Some(ix) if rec.repo_digest == Some(ix) => Some(Document {
                digest: ix,
                media_type: None,
                platform_manifest: Some((img.manifest, img.manifest_media_type.clone())),
            }),
            _ => Some(Document {
                digest: img.manifest,
                media_type: Some(img.manifest_media_type.clone()),
                platform_manifest: None,
            }),
        }
    }

    /// A manifest or index the store holds, by digest.
    pub fn by_digest(&self, digest: &Digest) -> Option<Document> {
        if let Some(img) = self.images.get(digest) {
            return Some(Document {
                digest: *digest,
                media_type: Some(img.manifest_media_type.clone()),
                platform_manifest: None,
            });
        }
        let img = self
            .images
            .values()
            .filter(|i| i.index == Some(*digest))
            .min_by_key(|i| i.manifest)?;
        Some(Document {
            digest: *digest,
            media_type: None,
            platform_manifest: Some((img.manifest, img.manifest_media_type.clone())),
        })
    }

    /// Tags of repository `path`, sorted, each once.
    pub fn tags(&self, path: &str) -> Vec<String> {
        let set: BTreeSet<String> = self
            .tags
            .iter()
            .filter(|(r, t)| Self::in_repository(r, path) && self.images.contains_key(&t.image))
            .filter_map(|(r, _)| r.tag().map(str::to_string))
            .collect();
        set.into_iter().collect()
    }

    /// Whether any name (tag or digest) of the store is in `path`.
    pub fn has_repository(&self, path: &str) -> bool {
        self.tags.iter().any(|(r, _)| Self::in_repository(r, path))
    }

    /// Every repository path, sorted, each once.
    pub fn repositories(&self) -> Vec<String> {
        let set: BTreeSet<String> = self
            .tags
            .iter()
            .map(|(r, _)| r.path().to_string())
            .collect();
        set.into_iter().collect()
    }

    /// Store names in repository `path` that name the image or index
    /// `digest` (what a manifest DELETE by digest removes).
    pub fn names_of(&self, path: &str, digest: &Digest) -> Vec<&Reference> {
        self.tags
            .iter()
            .filter(|(r, t)| {
                Self::in_repository(r, path)
                    && (t.image == *digest
                        || t.repo_digest == Some(*digest)
                        || r.digest() == Some(digest))
            })
            .map(|(r, _)| r)
            .collect()
    }

    /// The store name served as `path:tag`, for a DELETE of that tag.
    pub fn tag_name(&self, path: &str, tag: &str, order: &HostOrder) -> Option<&Reference> {
        self.best_tag(path, tag, order).map(|(r, _)| r)
    }

    /// Manifest digests of every image, for the referrers scan.
    pub fn manifests(&self) -> impl Iterator<Item = &ImageRecord> {
        self.images.values()
    }
}

/// One page of a sorted list: the items after `last`, at most `n`, and
/// whether more follow.
pub fn page(items: Vec<String>, n: Option<usize>, last: Option<&str>) -> (Vec<String>, bool) {
    let mut rest: Vec<String> = match last {
        Some(l) => items.into_iter().filter(|i| i.as_str() > l).collect(),
        None => items,
    };
    match n {
        Some(n) if rest.len() > n => {
            rest.truncate(n);
            (rest, true)
        }
        _ => (rest, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(seed: &[u8], index: Option<Digest>) -> ImageRecord {
        ImageRecord {
            manifest: Digest::of(seed),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest_size: 1,
            config: Digest::of(b"config"),
            config_size: 1,
            index,
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
            created: None,
            layers: vec![],
            stored_at: 0,
        }
    }

    fn tag(name: &str, img: &ImageRecord, repo_digest: Option<Digest>) -> (Reference, TagRecord) {
        (
            Reference::parse(name).unwrap(),
            TagRecord {
                image: img.manifest,
                repo_digest,
            },
        )
    }

    #[test]
    fn hosts_are_chosen_in_the_documented_order() {
        let hub = image(b"hub", None);
        let own = image(b"own", None);
        let ns = image(b"ns", None);
        let other = image(b"other", None);
        let catalog = Catalog::from_parts(
            vec![
                tag("debian:12", &hub, None),
                tag("127.0.0.1:5050/library/debian:12", &own, None),
                tag("mirror.example/library/debian:12", &ns, None),
                tag("zzz.example/only/here:1", &other, None),
            ],
            vec![hub.clone(), own.clone(), ns.clone(), other.clone()],
        );
        let pick = |order: &HostOrder, path: &str, t: &str| {
            catalog.resolve_tag(path, t, order).map(|d| d.digest)
        };
        let plain = HostOrder::new(None, &[], "127.0.0.1:5050", None);
        assert_eq!(pick(&plain, "library/debian", "12"), Some(own.manifest));
        let with_ns = HostOrder::new(Some("mirror.example"), &[], "127.0.0.1:5050", None);
        assert_eq!(pick(&with_ns, "library/debian", "12"), Some(ns.manifest));
        let hub_first = HostOrder::new(None, &["docker.io".into()], "127.0.0.1:5050", None);
        assert_eq!(pick(&hub_first, "library/debian", "12"), Some(hub.manifest));
        // docker.io/library/x is also served as plain x.
        let elsewhere = HostOrder::new(None, &[], "10.0.0.1:5050", None);
        assert_eq!(pick(&elsewhere, "debian", "12"), Some(hub.manifest));
        // A host in no list still has its images served.
        assert_eq!(pick(&plain, "only/here", "1"), Some(other.manifest));
        assert_eq!(pick(&plain, "only/here", "2"), None);
        assert_eq!(catalog.tags("library/debian"), vec!["12".to_string()]);
        assert_eq!(
            catalog.repositories(),
            vec!["library/debian".to_string(), "only/here".to_string()]
        );
    }

    #[test]
    fn an_image_pulled_through_an_index_is_served_as_that_index() {
        let ix = Digest::of(b"index");
        let img = image(b"amd64", Some(ix));
        let catalog = Catalog::from_parts(vec![tag("x.io/a:1", &img, Some(ix))], vec![img.clone()]);
        let order = HostOrder::new(None, &[], "127.0.0.1:1", None);
        let doc = catalog.resolve_tag("a", "1", &order).unwrap();
        assert_eq!(doc.digest, ix);
        assert_eq!(
            doc.platform_manifest.as_ref().map(|p| p.0),
            Some(img.manifest)
        );
        assert_eq!(catalog.by_digest(&ix).unwrap().digest, ix);
        assert_eq!(
            catalog.by_digest(&img.manifest).unwrap().digest,
            img.manifest
        );
        assert!(catalog.by_digest(&Digest::of(b"none")).is_none());
    }

    #[test]
    fn the_cached_catalog_is_read_again_after_any_change() {
        let (_dir, store, _lease) = crate::serve::testing::store();
        let cache = CatalogCache::default();
        let add_tag = |name: &str| {
            store
                .session(|meta| {
                    let mut b = meta.batch();
                    let img = image(name.as_bytes(), None);
                    b.put(
                        crate::meta::CF_TAGS,
                        name.as_bytes(),
                        &tag(name, &img, None).1,
                    )?;
                    b.commit()
                })
                .unwrap()
        };
        add_tag("x.io/a:1");
        assert!(cache.get(&store).unwrap().has_repository("a"));
        assert!(cache.get(&store).unwrap().has_repository("a"));
        assert_eq!(cache.loads(), 1, "unchanged: read once");
        // Another writer (a CLI command) changes the tags.
        add_tag("x.io/b:1");
        assert!(cache.get(&store).unwrap().has_repository("b"));
        assert_eq!(cache.loads(), 2);
    }

    #[test]
    fn pages_follow_last_and_n() {
        let items: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            page(items.clone(), Some(2), None),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            page(items.clone(), Some(2), Some("b")),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(
            page(items.clone(), None, Some("c")),
            (vec!["d".into()], false)
        );
        assert_eq!(page(items, Some(0), None), (vec![], true));
    }
}
