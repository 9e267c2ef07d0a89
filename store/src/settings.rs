//! Store settings (`lstore config`): a small JSON file under the root,
//! `settings.json`, replaced whole (written beside it, synced, renamed)
//! under the root lock, so a reader sees the old settings or the new, never
//! half of them. A store without the file has the defaults.

use std::fs;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::store::Store;

/// The file under the store root.
const SETTINGS_FILE: &str = "settings.json";

/// Every setting of a store, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default)]
pub(crate) struct Settings {
    /// Keep each layer's compressed blob once its folder is stored.
    pub keep_layer_blobs: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            keep_layer_blobs: true,
        }
    }
}

/// The settings `lstore config` knows, by name.
const KEYS: [&str; 1] = ["keep-layer-blobs"];

/// One setting as `lstore config` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Setting {
    /// Its name (`keep-layer-blobs`).
    pub key: String,
    /// Its value, as `lstore config KEY VALUE` takes it.
    pub value: String,
    /// Its value in a store that never set it.
    pub default: String,
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(Error::Invalid(format!(
            "{key} takes true or false, not {value:?}"
        ))),
    }
}

fn check_key(key: &str) -> Result<()> {
    if KEYS.contains(&key) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "unknown setting {key:?}; settings: {}",
        KEYS.join(", ")
    )))
}

impl Settings {
    /// The settings of the store at `root` (defaults without the file).
    pub(crate) fn load(root: &Path) -> Result<Settings> {
        let path = root.join(SETTINGS_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Invalid(format!(
                    "{}: not a settings file ({e}); set a value again with lstore config",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    /// Replaces the settings file of `root` at once (call under the lock).
    fn store(&self, root: &Path) -> Result<()> {
        let path = root.join(SETTINGS_FILE);
        let mut json =
            serde_json::to_vec_pretty(self).map_err(|e| Error::Invalid(e.to_string()))?;
        json.push(b'\n');
        let mut tmp = tempfile::NamedTempFile::new_in(root.join("tmp"))
            .ctx(|| "create a file in tmp/".to_string())?;
        tmp.write_all(&json)
            .and_then(|()| tmp.as_file().sync_all())
            .ctx(|| format!("write {}", tmp.path().display()))?;
        tmp.persist(&path)
            .map_err(|e| Error::io(format!("write {}", path.display()), e.error))?;
        crate::content::sync_dir(root)
    }

    fn value(&self, key: &str) -> String {
        match key {
            "keep-layer-blobs" => self.keep_layer_blobs.to_string(),
            _ => String::new(),
        }
    }

    fn setting(&self, key: &str) -> Setting {
        Setting {
            key: key.to_string(),
            value: self.value(key),
            default: Settings::default().value(key),
        }
    }
}

impl Store {
    /// `lstore config KEY`: one setting of the store.
    pub fn config_get(&self, key: &str) -> Result<Setting> {
        check_key(key)?;
        Ok(Settings::load(self.root())?.setting(key))
    }

    /// `lstore config`: every setting of the store.
    pub fn config_list(&self) -> Result<Vec<Setting>> {
        let settings = Settings::load(self.root())?;
        Ok(KEYS.iter().map(|k| settings.setting(k)).collect())
    }

    /// `lstore config KEY VALUE`: sets a setting; returns it as stored.
    /// Setting `keep-layer-blobs` to false drops nothing by itself: blobs
    /// go as layers are stored from then on, and `gc` drops those of the
    /// layers already stored. Setting it back to true keeps the blobs of
    /// layers stored from then on; dropped blobs stay dropped.
    pub fn config_set(&self, key: &str, value: &str) -> Result<Setting> {
        check_key(key)?;
        let keep = parse_bool(key, value)?;
        self.locked(|| {
            // A file that does not parse is replaced (what the error
            // reading it tells the user to do).
            let mut settings = Settings::load(self.root()).unwrap_or_default();
            settings.keep_layer_blobs = keep;
            settings.store(self.root())?;
            Ok(settings.setting(key))
        })
    }

    /// Whether layer blobs are kept once their layers are stored.
    pub(crate) fn keeps_layer_blobs(&self) -> Result<bool> {
        Ok(Settings::load(self.root())?.keep_layer_blobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_is_read_set_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let s = store.config_get("keep-layer-blobs").unwrap();
        assert_eq!((s.value.as_str(), s.default.as_str()), ("true", "true"));
        assert!(store.keeps_layer_blobs().unwrap());
        store.config_set("keep-layer-blobs", "false").unwrap();
        assert_eq!(store.config_get("keep-layer-blobs").unwrap().value, "false");
        assert!(!store.keeps_layer_blobs().unwrap());
        // Another process opening the root sees it.
        let again = Store::open(dir.path(), Default::default()).unwrap();
        assert!(!again.keeps_layer_blobs().unwrap());
        assert_eq!(again.config_list().unwrap()[0].value, "false");
        store.config_set("keep-layer-blobs", "true").unwrap();
        assert!(again.keeps_layer_blobs().unwrap());
    }

    #[test]
    fn unknown_keys_and_values_are_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        for e in [
            store.config_get("keep-blobs").unwrap_err(),
            store.config_set("keep-blobs", "true").unwrap_err(),
            store.config_set("keep-layer-blobs", "yes").unwrap_err(),
            store.config_set("keep-layer-blobs", "").unwrap_err(),
        ] {
            assert!(matches!(e, Error::Invalid(_)), "{e:?}");
            assert!(!e.to_string().contains('\n'));
        }
        assert!(store.keeps_layer_blobs().unwrap(), "nothing was written");
        fs::write(dir.path().join(SETTINGS_FILE), "{oops").unwrap();
        assert!(store.config_get("keep-layer-blobs").is_err());
        // A broken file is replaced by setting a value again.
        store.config_set("keep-layer-blobs", "false").unwrap();
        assert!(!store.keeps_layer_blobs().unwrap());
    }
}
