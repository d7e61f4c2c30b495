//! The test harness, by what each part is: a fresh database per test (`database`), the
//! real application on a loopback port with real signatures (`app`), reading rows on
//! either backend (`rows`), a fake Clerk Backend API (`fake_clerk`), and raw HTTP and a
//! cuttable TCP proxy (`network`). PostgreSQL tests never skip: they panic when the
//! server cannot be reached.

mod app;
mod database;
mod fake_clerk;
mod network;
mod rows;

use std::sync::Once;

pub use app::*;
pub use database::*;
pub use fake_clerk::*;
pub use network::*;
pub use rows::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Emit `mod <name> { postgres, sqlite }` tests that call `<name>(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
        }
    )*};
}

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const API_KEY: &str = "csk_test_primary_0123456789";
pub const API_KEY_2: &str = "csk_test_rotated_0123456789";
pub const ADMIN_KEY: &str = "console_admin_key_0123456789";

static INIT: Once = Once::new();

pub(crate) fn init() {
    INIT.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if std::env::var_os("TEST_LOG").is_some() {
            clerk_sync::telemetry::init(
                Some(clerk_sync::cli::LogFormat::Pretty),
                clerk_sync::telemetry::DEFAULT_FILTER,
            );
        }
    });
}

/// Run a command to its end: whether it succeeded, its stdout and its stderr.
pub fn run_to_end(command: &mut std::process::Command) -> (bool, String, String) {
    let out = command.output().expect("run the command");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
