//! SQLite's one writer, with group commit: the signup and credits transactions on SQLite
//! run here, on a thread of their own that owns one connection.
//!
//! Why: SQLite has one writer at a time, so connections that write in turn only queue in
//! its busy handler; and sqlx's driver sends every statement to a worker thread and back
//! (measured: 2/3 of the service's CPU per signup went to those thread wake-ups, not to
//! SQLite). Here a request's whole transaction is one hop to this thread, and every
//! request waiting when the thread comes round shares one `BEGIN IMMEDIATE` … `COMMIT`,
//! as the PostgreSQL signup queue shares one statement.
//!
//! Each request runs inside its own `SAVEPOINT`: one that fails or refuses is rolled back
//! alone, and the others commit. Its answer is sent only once the batch's `COMMIT` is
//! known, so nothing is answered that was not durable (WAL, `synchronous=NORMAL`, as every
//! connection of the pool). Reads, and the rarer writes, stay on the sqlx pool.

use std::path::Path;
use std::sync::{mpsc, Arc, Weak};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, ToSql};
use tokio::sync::oneshot;

use super::error::{sqlite_code_is_transient, sqlite_constraint};
use super::StoreError;

/// At most this many requests share one commit (a batch holds the write lock this long).
const MAX_BATCH: usize = 64;

/// What a request decided about its own writes.
pub enum Step<T> {
    /// Keep them: the answer is sent once the batch commits.
    Commit(T),
    /// Roll them back (a refusal); the answer does not depend on the batch's commit.
    Rollback(T),
}

/// A request: run on the writer's connection, or given the error that kept its batch from
/// beginning (it is then answered with it, having written nothing).
type Work = Box<dyn FnOnce(Result<&Connection, &rusqlite::Error>) -> Finish + Send>;
/// Sends a request's answer, given how the batch's commit went (`None` when there was
/// nothing of this request's to commit).
type Finish = Box<dyn FnOnce(Option<&rusqlite::Error>) + Send>;

/// The handle requests are sent through; cloned into every [`super::Store`] clone. The
/// thread ends when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct SqliteWriter {
    jobs: mpsc::Sender<Work>,
}

impl SqliteWriter {
    /// Open the writer's connection (the file must exist, as after `Store::connect`) and
    /// start its thread.
    pub fn start(path: &Path) -> Result<Self, StoreError> {
        let conn = open(path)?;
        // Its commits never stop to copy the WAL back into the database: the checkpointer
        // thread does that beside it.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
        conn.set_prepared_statement_cache_capacity(64);
        let checkpoints = open(path)?;
        let (jobs, queue) = mpsc::channel::<Work>();
        let alive = Arc::new(());
        let watch = Arc::downgrade(&alive);
        spawn("sqlite-writer", move || {
            run(conn, queue);
            drop(alive);
        })?;
        spawn("sqlite-checkpoint", move || checkpoint(checkpoints, watch))?;
        Ok(Self { jobs })
    }

    /// Run `work` in this writer's next batch, in a savepoint of its own, and answer once
    /// its writes are committed (or rolled back, for [`Step::Rollback`]). An error from
    /// `work` rolls back its writes.
    pub async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<Step<T>, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, StoreError>>();
        let job: Work = Box::new(
            move |conn: Result<&Connection, &rusqlite::Error>| -> Finish {
                if reply.is_closed() {
                    // The caller gave up (its transaction timeout, answered 503 so that
                    // Svix retries) while the batch waited for the write lock: write
                    // nothing for it, or the retry would find its event already handled.
                    return Box::new(|_| {});
                }
                let outcome = match conn {
                    Ok(conn) => in_savepoint(conn, work),
                    Err(e) => Err(StoreError::Unavailable(
                        format!("the SQLite write lock was not free: {e}").into(),
                    )),
                };
                Box::new(move |commit: Option<&rusqlite::Error>| {
                    let answer = match (outcome, commit) {
                        (Ok((true, value)), None) => Ok(value),
                        (Ok((true, _)), Some(e)) => Err(commit_failed(e)),
                        (Ok((false, value)), _) => Ok(value),
                        (Err(e), _) => Err(e),
                    };
                    // The caller may have given up (its timeout): nothing to tell then.
                    let _ = reply.send(answer);
                })
            },
        );
        self.jobs
            .send(job)
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite writer has stopped".into()))?
    }
}

/// A connection as every connection of the pool is set up (`DatabaseUrl::parse_sqlite`).
fn open(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
    )?;
    Ok(conn)
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(body)
        .map(drop)
        .map_err(|e| StoreError::Unavailable(Box::new(e)))
}

/// How often the checkpointer copies committed WAL frames into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The checkpointer thread, until the writer's thread ends: a `PASSIVE` checkpoint (it
/// waits for no one and no one waits for it) every [`CHECKPOINT_EVERY`], so that the WAL
/// stays short without a commit of the writer's doing the copying, which held up every
/// request of its batch (SQLite's default: the commit that takes the WAL past 1,000
/// pages checkpoints).
fn checkpoint(conn: Connection, writer: Weak<()>) {
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        if writer.upgrade().is_none() {
            return;
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error.message = %e, "SQLite checkpoint failed; the next one tries again");
        }
    }
}

/// `work` in a savepoint: `(true, value)` when its writes are kept for the commit.
fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce(&Connection) -> Result<Step<T>, StoreError>,
) -> Result<(bool, T), StoreError> {
    conn.execute_batch("SAVEPOINT request")?;
    // A request that panics is rolled back and answered with an error; the thread, and
    // every other request of the batch, go on.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(conn)))
        .unwrap_or_else(|_| Err(StoreError::Other("the SQLite write panicked".into())));
    let keep = matches!(outcome, Ok(Step::Commit(_)));
    let end = if keep {
        "RELEASE request"
    } else {
        "ROLLBACK TO request; RELEASE request"
    };
    conn.execute_batch(end)?;
    match outcome? {
        Step::Commit(value) => Ok((true, value)),
        Step::Rollback(value) => Ok((false, value)),
    }
}

fn commit_failed(e: &rusqlite::Error) -> StoreError {
    // The batch's writes are gone; a retry may succeed (the caller answers 503).
    StoreError::Unavailable(format!("the SQLite commit failed: {e}").into())
}

/// The writer thread: take every request waiting (at most `MAX_BATCH`), run them in one
/// transaction, commit, answer.
fn run(conn: Connection, queue: mpsc::Receiver<Work>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            // Another writer (a pool connection) held the lock past the busy timeout:
            // every request of this batch fails as unavailable (503), with nothing written.
            tracing::warn!(error.message = %e, requests = batch.len(), "SQLite writer could not begin");
            for job in batch {
                job(Err(&e))(None);
            }
            continue;
        }
        let finishes: Vec<Finish> = batch.into_iter().map(|job| job(Ok(&conn))).collect();
        let committed = conn.execute_batch("COMMIT");
        if committed.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let error = committed.err();
        for finish in finishes {
            finish(error.as_ref());
        }
    }
}

/// A time as sqlx writes a `NaiveDateTime` to SQLite, so both connections' rows read alike.
pub fn sqlite_time(at: chrono::NaiveDateTime) -> String {
    at.format("%F %T%.f").to_string()
}

/// Run `sql` with `$1`, `$2`, … bound to `params` in order, by their names: SQLite
/// numbers `$n` parameters in the order they first appear, which is not always `n`.
pub fn bind<'c>(
    conn: &'c Connection,
    sql: &str,
    params: &[&dyn ToSql],
) -> Result<rusqlite::CachedStatement<'c>, StoreError> {
    assert!(
        params.len() <= PARAMETERS.len(),
        "more parameters than names"
    );
    let mut stmt = conn.prepare_cached(sql)?;
    for (name, value) in PARAMETERS.iter().zip(params) {
        if let Some(index) = stmt.parameter_index(name)? {
            stmt.raw_bind_parameter(index, value)?;
        }
    }
    Ok(stmt)
}

/// The names [`bind`] binds, without building them per statement.
const PARAMETERS: [&str; 12] = [
    "$1", "$2", "$3", "$4", "$5", "$6", "$7", "$8", "$9", "$10", "$11", "$12",
];

/// The first row `sql` returns, read by `read`, if it returns one.
pub fn first_row<T>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn ToSql],
    read: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Option<T>, StoreError> {
    Ok(bind(conn, sql, params)?
        .raw_query()
        .next()?
        .map(read)
        .transpose()?)
}

/// The first column of the first row `sql` returns, if it returns one.
pub fn first<T: rusqlite::types::FromSql>(
    conn: &Connection,
    sql: &str,
    params: &[&dyn ToSql],
) -> Result<Option<T>, StoreError> {
    first_row(conn, sql, params, |row| row.get(0))
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        if let rusqlite::Error::SqliteFailure(failure, message) = &e {
            if sqlite_code_is_transient(i64::from(failure.extended_code)) {
                return Self::Unavailable(Box::new(e));
            }
            if let Some(violation) = sqlite_constraint(failure.extended_code, message.as_deref()) {
                return Self::Constraint(violation);
            }
            if message
                .as_deref()
                .is_some_and(super::error::sqlite_message_is_schema)
            {
                return Self::schema_drift(Box::new(e));
            }
        }
        if let rusqlite::Error::InvalidColumnType(..) = &e {
            return Self::schema_drift(Box::new(e));
        }
        Self::Other(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ConstraintKind;

    /// A writer on a new database file holding `table`.
    fn writer_on(table: &str) -> (tempfile::TempDir, std::path::PathBuf, SqliteWriter) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(table)
            .unwrap();
        let writer = SqliteWriter::start(&path).unwrap();
        (dir, path, writer)
    }

    /// The ids in table `t`, read by a connection of the test's own.
    fn ids_in_t(path: &Path) -> Vec<i64> {
        Connection::open(path)
            .unwrap()
            .prepare("SELECT id FROM t ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn dollar_parameters_bind_by_their_number_not_their_place() {
        let conn = Connection::open_in_memory().unwrap();
        let joined: String = bind(&conn, "SELECT $2 || $1 || $2", &[&"a", &"b"])
            .unwrap()
            .raw_query()
            .next()
            .unwrap()
            .unwrap()
            .get(0)
            .unwrap();
        assert_eq!(joined, "bab");
    }

    /// Requests sent together share a batch; each keeps, rolls back or fails on its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_request_of_a_batch_commits_rolls_back_or_fails_alone() {
        let (_dir, path, writer) =
            writer_on("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)");
        let requests = (0..60i64).map(|i| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let answer = writer
                    .write(move |conn| {
                        let v = (i % 3 != 2).then_some("x");
                        bind(conn, "INSERT INTO t (id, v) VALUES ($1, $2)", &[&i, &v])?
                            .raw_execute()?;
                        Ok(if i % 3 == 1 {
                            Step::Rollback(i)
                        } else {
                            Step::Commit(i)
                        })
                    })
                    .await;
                (i, answer)
            })
        });
        for request in requests {
            let (i, answer) = request.await.unwrap();
            match i % 3 {
                0 | 1 => assert_eq!(answer.unwrap(), i),
                _ => match answer {
                    Err(StoreError::Constraint(v)) => {
                        assert_eq!(v.kind, ConstraintKind::NotNull);
                        assert_eq!(v.table.as_deref(), Some("t"));
                        assert_eq!(v.target.as_deref(), Some("v"));
                    }
                    other => panic!("request {i}: {other:?}"),
                },
            }
        }
        let kept: Vec<i64> = ids_in_t(&path);
        assert_eq!(kept, (0..60).step_by(3).collect::<Vec<i64>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_that_panics_writes_nothing_and_the_writer_goes_on() {
        let (_dir, path, writer) = writer_on("CREATE TABLE t (id INTEGER PRIMARY KEY)");
        let insert = |i: i64, panics: bool| {
            writer.write(move |conn| {
                bind(conn, "INSERT INTO t (id) VALUES ($1)", &[&i])?.raw_execute()?;
                assert!(!panics, "request {i} panics after its insert");
                Ok(Step::Commit(i))
            })
        };
        let (a, b, c) = tokio::join!(insert(1, false), insert(2, true), insert(3, false));
        assert_eq!((a.unwrap(), c.unwrap()), (1, 3));
        assert!(matches!(b, Err(StoreError::Other(_))), "{b:?}");
        assert_eq!(insert(4, false).await.unwrap(), 4);
        let kept: Vec<i64> = ids_in_t(&path);
        assert_eq!(kept, [1, 3, 4]);
    }

    /// The writer's commits do not checkpoint; the checkpointer thread copies the WAL
    /// into the database file while the writer goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committed_pages_reach_the_database_file_without_a_checkpointing_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        let setup = Connection::open(&path).unwrap();
        setup
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE b (v BLOB NOT NULL)")
            .unwrap();
        drop(setup);
        let before = std::fs::metadata(&path).unwrap().len();
        let writer = SqliteWriter::start(&path).unwrap();
        for _ in 0..200 {
            writer
                .write(|conn| {
                    bind(conn, "INSERT INTO b (v) VALUES (zeroblob(10000))", &[])?.raw_execute()?;
                    Ok(Step::Commit(()))
                })
                .await
                .unwrap();
        }
        // 2 MB committed; wait for the checkpointer's next rounds.
        let mut grown = 0;
        for _ in 0..40 {
            tokio::time::sleep(CHECKPOINT_EVERY).await;
            grown = std::fs::metadata(&path).unwrap().len() - before;
            if grown >= 2_000_000 {
                break;
            }
        }
        assert!(
            grown >= 2_000_000,
            "the database file grew by {grown} bytes only"
        );
    }
}
