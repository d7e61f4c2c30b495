//! `.env`: where Next.js and Prisma projects keep `DATABASE_URL` and the Clerk keys. It is
//! read from the current directory before the command line is parsed, as sqlx-cli and
//! Prisma read it; a variable already in the environment wins over the file.

use std::path::{Path, PathBuf};

/// What `.env` provided: the file, and the names (never the values) of the variables it
/// set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvFile {
    pub path: PathBuf,
    pub set: Vec<String>,
    /// Variables in the file that the environment already had (the environment won).
    pub overridden: Vec<String>,
}

impl EnvFile {
    /// One line for the user: which file, which variables.
    pub fn describe(&self) -> String {
        let mut line = format!("read {}: ", self.path.display());
        if self.set.is_empty() {
            line.push_str("no variable taken");
        } else {
            line.push_str(&self.set.join(", "));
        }
        if !self.overridden.is_empty() {
            line.push_str(&format!(
                " ({} already set in the environment, which wins)",
                self.overridden.join(", ")
            ));
        }
        line
    }
}

/// Load `dir/.env` into the process environment, without replacing a variable that is
/// already set. `Ok(None)`: there is no `.env`.
pub fn load(dir: &Path) -> Result<Option<EnvFile>, String> {
    let path = dir.join(".env");
    if !path.is_file() {
        return Ok(None);
    }
    let entries = dotenvy::from_path_iter(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut file = EnvFile {
        path: path.canonicalize().unwrap_or(path.clone()),
        set: Vec::new(),
        overridden: Vec::new(),
    };
    for entry in entries {
        let (key, value) = entry.map_err(|e| {
            format!(
                "{}: {e} (each line is NAME=value; quote values with spaces)",
                path.display()
            )
        })?;
        if std::env::var_os(&key).is_some() {
            file.overridden.push(key);
        } else {
            // main calls this before the async runtime starts: one thread.
            std::env::set_var(&key, value);
            file.set.push(key);
        }
    }
    Ok(Some(file))
}
