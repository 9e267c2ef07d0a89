//! Registry credentials in Docker's `config.json` (`$DOCKER_CONFIG`, else
//! `~/.docker/`): `auths.<registry>.auth` is base64 of `user:password`;
//! Docker Hub's key is `https://index.docker.io/v1/`. Credential helpers
//! (`credHelpers`, `credsStore`) are asked first when configured.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Map, Value};

use super::error::RegistryError;
use crate::reference::{DOCKER_HUB_API_HOST, DOCKER_HUB_DOMAIN};

/// The key Docker uses for Docker Hub in `auths`.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// A username and password (or token used as a password).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Normalises what a user types after `login`/`logout` to a registry host:
/// `https://index.docker.io/v1/`, `index.docker.io` or an empty string
/// become `docker.io`; a scheme and path are dropped; `localhost:5000`
/// stays as is.
pub fn normalize_registry(registry: &str) -> Result<String, RegistryError> {
    let trimmed = registry.trim();
    let without_scheme = trimmed
        .strip_prefix("https://")
        .or_else(|| trimmed.strip_prefix("http://"))
        .unwrap_or(trimmed);
    let host = without_scheme.split('/').next().unwrap_or_default();
    if host.is_empty() {
        return Ok(DOCKER_HUB_DOMAIN.to_string());
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
    {
        return Err(RegistryError::InvalidRegistry(registry.to_string()));
    }
    let host = host.to_ascii_lowercase();
    Ok(match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB_DOMAIN.to_string()
        }
        _ => host,
    })
}

/// The `auths` key Docker writes for a registry host.
pub fn auth_key(registry: &str) -> String {
    if is_docker_hub(registry) {
        DOCKER_HUB_AUTH_KEY.to_string()
    } else {
        registry.to_string()
    }
}

fn is_docker_hub(host: &str) -> bool {
    matches!(
        host,
        DOCKER_HUB_DOMAIN | DOCKER_HUB_API_HOST | "index.docker.io" | "registry.hub.docker.com"
    )
}

/// Docker's `ConvertToHostname`: `https://host:5000/v1/` → `host:5000`.
fn key_to_host(key: &str) -> String {
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = without_scheme.split('/').next().unwrap_or_default();
    if is_docker_hub(host) {
        DOCKER_HUB_DOMAIN.to_string()
    } else {
        host.to_string()
    }
}

/// One Docker client configuration file.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
}

impl DockerConfig {
    /// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
    pub fn default_location() -> Option<DockerConfig> {
        Self::location_from(std::env::var_os("DOCKER_CONFIG"), std::env::var_os("HOME"))
    }

    fn location_from(
        docker_config: Option<OsString>,
        home: Option<OsString>,
    ) -> Option<DockerConfig> {
        if let Some(dir) = docker_config.filter(|d| !d.is_empty()) {
            return Some(DockerConfig::in_dir(Path::new(&dir)));
        }
        let home = home.filter(|h| !h.is_empty())?;
        Some(DockerConfig::in_dir(&Path::new(&home).join(".docker")))
    }

    /// `<dir>/config.json`.
    pub fn in_dir(dir: &Path) -> DockerConfig {
        DockerConfig {
            path: dir.join("config.json"),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, reason: impl fmt::Display) -> RegistryError {
        RegistryError::Credentials {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// The whole file as a JSON object; an absent file is an empty object.
    fn read(&self) -> Result<Map<String, Value>, RegistryError> {
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
            Err(e) => return Err(self.error(e)),
        };
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(Map::new());
        }
        match serde_json::from_slice::<Value>(&text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(self.error("not a JSON object")),
            Err(e) => Err(self.error(format!("invalid JSON: {e}"))),
        }
    }

    /// Writes the file atomically with mode 0600 (its directory 0700 when
    /// created).
    fn write(&self, config: &Map<String, Value>) -> Result<(), RegistryError> {
        let dir = self
            .path
            .parent()
            .ok_or_else(|| self.error("no parent directory"))?;
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| self.error(e))?;
        }
        let mut text = serde_json::to_vec_pretty(config).map_err(|e| self.error(e))?;
        text.push(b'\n');
        let tmp = dir.join(format!(".config.json.{}.tmp", std::process::id()));
        let result = (|| -> std::io::Result<()> {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // The mode above is filtered by the umask; credentials stay private.
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
            file.write_all(&text)?;
            file.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e| self.error(e))
    }

    /// Credentials for a registry host (`docker.io`, `registry-1.docker.io`
    /// and `127.0.0.1:5000` alike), or `None` when there are none.
    pub(crate) fn credentials_for(
        &self,
        registry: &str,
    ) -> Result<Option<Credentials>, RegistryError> {
        let config = self.read()?;
        let host = key_to_host(registry);
        let helper = config
            .get("credHelpers")
            .and_then(Value::as_object)
            .and_then(|helpers| {
                helpers
                    .iter()
                    .find(|(key, _)| key_to_host(key) == host)
                    .and_then(|(_, v)| v.as_str())
            })
            .or_else(|| config.get("credsStore").and_then(Value::as_str))
            .filter(|h| !h.is_empty());
        if let Some(helper) = helper {
            if let Some(found) = ask_helper(helper, &auth_key(&host)) {
                return Ok(Some(found));
            }
        }
        let Some(auths) = config.get("auths").and_then(Value::as_object) else {
            return Ok(None);
        };
        // An exact key first, then any key naming the same host.
        let exact = auths.get(&auth_key(&host));
        let entry = exact.or_else(|| {
            auths
                .iter()
                .find(|(key, _)| key_to_host(key) == host)
                .map(|(_, v)| v)
        });
        match entry {
            Some(entry) => self.decode_entry(entry),
            None => Ok(None),
        }
    }

    fn decode_entry(&self, entry: &Value) -> Result<Option<Credentials>, RegistryError> {
        if let Some(auth) = entry
            .get("auth")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| self.error(format!("invalid auth field: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| self.error("invalid auth field: not UTF-8"))?;
            let (username, password) = decoded
                .split_once(':')
                .ok_or_else(|| self.error("invalid auth field: no ':' in user:password"))?;
            return Ok(Some(Credentials {
                username: username.to_string(),
                password: password.trim_end_matches('\0').to_string(),
            }));
        }
        let username = entry.get("username").and_then(Value::as_str);
        let password = entry.get("password").and_then(Value::as_str);
        Ok(match (username, password) {
            (Some(u), Some(p)) if !u.is_empty() => Some(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }),
            _ => None,
        })
    }

    /// Stores credentials for `registry` (a normalised host) as
    /// `docker login` does, keeping everything else in the file.
    pub(crate) fn store(
        &self,
        registry: &str,
        credentials: &Credentials,
    ) -> Result<(), RegistryError> {
        let mut config = self.read()?;
        let auths = config
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        let encoded = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", credentials.username, credentials.password));
        if let Some(auths) = auths.as_object_mut() {
            let host = key_to_host(registry);
            // Other spellings of the same host would shadow or confuse.
            auths.retain(|key, _| key_to_host(key) != host);
            let mut entry = Map::new();
            entry.insert("auth".to_string(), Value::String(encoded));
            auths.insert(auth_key(&host), Value::Object(entry));
        }
        self.write(&config)
    }

    /// Removes the credentials of `registry`; `false` when there were none.
    pub(crate) fn remove(&self, registry: &str) -> Result<bool, RegistryError> {
        let mut config = self.read()?;
        let host = key_to_host(registry);
        let Some(auths) = config.get_mut("auths").and_then(Value::as_object_mut) else {
            return Ok(false);
        };
        let before = auths.len();
        auths.retain(|key, _| key_to_host(key) != host);
        if auths.len() == before {
            return Ok(false);
        }
        self.write(&config)?;
        Ok(true)
    }
}

/// Asks `docker-credential-<helper> get`; `None` when the helper is
/// missing or has nothing for this registry.
fn ask_helper(helper: &str, server_url: &str) -> Option<Credentials> {
    if !helper
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return None;
    }
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server_url.as_bytes());
    }
    let output = child.wait_with_output().ok()?;
    if !output.status.success() {
        return None;
    }
    let value: Value = serde_json::from_slice(&output.stdout).ok()?;
    let username = value.get("Username")?.as_str()?.to_string();
    let password = value.get("Secret")?.as_str()?.to_string();
    // `<token>` is how helpers mark an identity token, which needs OAuth.
    if username.is_empty() || username == "<token>" {
        return None;
    }
    Some(Credentials { username, password })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> Credentials {
        Credentials {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn normalizes_registry_names() {
        for (input, want) in [
            ("", "docker.io"),
            ("docker.io", "docker.io"),
            ("https://index.docker.io/v1/", "docker.io"),
            ("index.docker.io", "docker.io"),
            ("registry-1.docker.io", "docker.io"),
            ("localhost:5000", "localhost:5000"),
            ("http://127.0.0.1:5000/", "127.0.0.1:5000"),
            ("Quay.IO", "quay.io"),
            ("[::1]:5000", "[::1]:5000"),
        ] {
            assert_eq!(normalize_registry(input).unwrap(), want, "{input:?}");
        }
        assert!(normalize_registry("bad host").is_err());
        assert_eq!(auth_key("docker.io"), DOCKER_HUB_AUTH_KEY);
        assert_eq!(auth_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn reads_docker_written_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = DockerConfig::in_dir(dir.path());
        assert_eq!(
            config.credentials_for("docker.io").unwrap(),
            None,
            "no file"
        );
        fs::write(
            config.path(),
            r#"{
              "auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOmh1YnBhc3M="},
                "https://quay.io": {"auth": "cTpwOndpdGg6Y29sb25z"},
                "127.0.0.1:5000": {"username": "u", "password": "p"},
                "empty.example.com": {}
              },
              "psFormat": "table {{.ID}}"
            }"#,
        )
        .unwrap();
        assert_eq!(
            config.credentials_for("docker.io").unwrap(),
            Some(creds("hub", "hubpass"))
        );
        assert_eq!(
            config.credentials_for("registry-1.docker.io").unwrap(),
            Some(creds("hub", "hubpass"))
        );
        assert_eq!(
            config.credentials_for("quay.io").unwrap(),
            Some(creds("q", "p:with:colons"))
        );
        assert_eq!(
            config.credentials_for("127.0.0.1:5000").unwrap(),
            Some(creds("u", "p"))
        );
        assert_eq!(config.credentials_for("empty.example.com").unwrap(), None);
        assert_eq!(config.credentials_for("other.example.com").unwrap(), None);

        fs::write(
            config.path(),
            r#"{"auths": {"x.io": {"auth": "!!notbase64"}}}"#,
        )
        .unwrap();
        let err = config.credentials_for("x.io").unwrap_err().to_string();
        assert!(err.contains("invalid auth field"), "{err}");
        fs::write(config.path(), "[1,2]").unwrap();
        assert!(config.credentials_for("x.io").is_err());
        fs::write(config.path(), "{broken").unwrap();
        assert!(config
            .credentials_for("x.io")
            .unwrap_err()
            .to_string()
            .contains("invalid JSON"));
    }

    #[test]
    fn store_and_remove_keep_other_settings() {
        let dir = tempfile::tempdir().unwrap();
        let config = DockerConfig::in_dir(&dir.path().join("sub"));
        config
            .store("127.0.0.1:5000", &creds("alice", "s3cret"))
            .unwrap();
        let mode = fs::metadata(config.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let written: Value = serde_json::from_slice(&fs::read(config.path()).unwrap()).unwrap();
        assert_eq!(
            written["auths"]["127.0.0.1:5000"]["auth"],
            "YWxpY2U6czNjcmV0"
        );

        // Unrelated settings and other registries survive.
        let mut map = config.read().unwrap();
        map.insert("detachKeys".into(), Value::String("ctrl-e,e".into()));
        config.write(&map).unwrap();
        config.store("docker.io", &creds("hub", "x")).unwrap();
        config
            .store("127.0.0.1:5000", &creds("alice", "new"))
            .unwrap();
        let written: Value = serde_json::from_slice(&fs::read(config.path()).unwrap()).unwrap();
        assert_eq!(written["detachKeys"], "ctrl-e,e");
        assert!(written["auths"][DOCKER_HUB_AUTH_KEY]["auth"].is_string());
        assert_eq!(written["auths"].as_object().unwrap().len(), 2);
        assert_eq!(
            config.credentials_for("127.0.0.1:5000").unwrap(),
            Some(creds("alice", "new"))
        );

        assert!(config.remove("127.0.0.1:5000").unwrap());
        assert!(!config.remove("127.0.0.1:5000").unwrap());
        assert_eq!(config.credentials_for("127.0.0.1:5000").unwrap(), None);
        assert_eq!(
            config.credentials_for("docker.io").unwrap(),
            Some(creds("hub", "x"))
        );
        assert!(config.remove("https://index.docker.io/v1/").unwrap());
        assert!(!dir.path().join("sub/.config.json.tmp").exists());
    }

    #[test]
    fn refuses_to_overwrite_a_broken_file() {
        let dir = tempfile::tempdir().unwrap();
        let config = DockerConfig::in_dir(dir.path());
        fs::write(config.path(), "{not json").unwrap();
        assert!(config.store("x.io", &creds("a", "b")).is_err());
        assert_eq!(fs::read_to_string(config.path()).unwrap(), "{not json");
    }

    #[test]
    fn default_location_honours_docker_config() {
        let at = |dc: Option<&str>, home: Option<&str>| {
            DockerConfig::location_from(dc.map(Into::into), home.map(Into::into))
                .map(|c| c.path().to_path_buf())
        };
        assert_eq!(
            at(Some("/cfg"), Some("/home/u")),
            Some(PathBuf::from("/cfg/config.json"))
        );
        assert_eq!(
            at(Some(""), Some("/home/u")),
            Some(PathBuf::from("/home/u/.docker/config.json"))
        );
        assert_eq!(
            at(None, Some("/home/u")),
            Some(PathBuf::from("/home/u/.docker/config.json"))
        );
        assert_eq!(at(None, None), None);
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", creds("alice", "topsecret"));
        assert!(shown.contains("alice") && !shown.contains("topsecret"));
    }
}
