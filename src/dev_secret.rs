//! The development signing secret: with no `CLERK_WEBHOOK_SIGNING_SECRET`, `serve`
//! generates one once into the data directory, and `send` reads it from there.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::webhooks::WebhookSecret;

pub const FILE_NAME: &str = "webhook-secret";

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Read the secret in `data_dir`, if there is one.
pub fn load(data_dir: &Path) -> std::io::Result<Option<(WebhookSecret, String)>> {
    match std::fs::read_to_string(path(data_dir)) {
        Ok(text) => {
            let text = text.trim().to_owned();
            let secret = WebhookSecret::parse(&text).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path(data_dir).display()),
                )
            })?;
            Ok(Some((secret, text)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Read the secret, or generate and store it (mode 0600). Returns the secret, its text,
/// and whether it was just created.
pub fn load_or_create(data_dir: &Path) -> std::io::Result<(WebhookSecret, String, bool)> {
    if let Some((secret, text)) = load(data_dir)? {
        return Ok((secret, text, false));
    }
    std::fs::create_dir_all(data_dir)?;
    let (secret, text) = WebhookSecret::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path(data_dir))?;
    writeln!(file, "{text}")?;
    Ok((secret, text, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_once_then_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let (_, first, created) = load_or_create(dir.path()).unwrap();
        assert!(created && first.starts_with("whsec_"));
        let (_, second, created) = load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first, second);
    }
}
