//! The PostgreSQL signup queue: webhooks that arrive while a statement runs share the next.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::metrics::QueueMetrics;
use crate::store::PgStore;

use super::postgres::{run_pg_signup, Applied, SignupRow};
use super::*;

/// Webhooks that arrive while the database is busy wait here and go to it together, as
/// one [`PG_SIGNUP`]: one round trip, one plan and one commit for the group (group
/// commit). A webhook that finds the queue idle goes at once, alone, so the queue costs no
/// latency when the service is quiet.
///
/// One statement at a time per process, from a task spawned when work arrives and ended
/// when the queue is empty. Measured on 2 cores (README, Performance): one queue beat one
/// per pooled connection, whose smaller batches each paid a plan and a commit. Scaling
/// out is more replicas; their statements meet in PostgreSQL, whose unique indexes decide.
///
/// The events of one user are applied in arrival order and never in one statement (nor
/// are two webhooks with one `svix-id` or email address: [`SignupRow::conflicts_with`]).
/// A caller that stops waiting (its timeout, a closed connection) is dropped from the
/// queue before its webhook is sent; Svix delivers it again. A batch the database refuses
/// (a constraint, a deadlock with another writer) is applied again one webhook at a time,
/// so each gets its own answer.
#[derive(Debug, Clone)]
pub struct SignupQueue {
    pg: PgStore,
    signup_credits: i32,
    state: Arc<Mutex<QueueState>>,
    metrics: QueueMetrics,
}

/// The most webhooks in one statement.
const MAX_BATCH: usize = 64;

#[derive(Debug, Default)]
struct QueueState {
    waiting: Vec<Waiting>,
    /// A task is applying the queue's webhooks.
    running: bool,
}

#[derive(Debug)]
struct Waiting {
    row: SignupRow,
    reply: Reply,
}

type Reply = oneshot::Sender<Result<Option<Applied>, StoreError>>;

impl SignupQueue {
    pub fn new(pg: &PgStore, settings: &SignupSettings, metrics: QueueMetrics) -> Self {
        Self {
            pg: pg.clone(),
            signup_credits: settings.signup_credits,
            state: Arc::default(),
            metrics,
        }
    }

    pub(super) async fn apply(&self, row: SignupRow) -> Result<Option<Applied>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            state.waiting.push(Waiting { row, reply });
            self.metrics.waiting.set(state.waiting.len() as i64);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            tokio::spawn(self.clone().run());
        }
        // The sender is dropped unanswered only if the queue's task panicked.
        answer
            .await
            .map_err(|_| StoreError::Unavailable(Box::new(sqlx::Error::WorkerCrashed)))?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        // A list and a flag: valid after any panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Apply the waiting webhooks, a batch at a time, until none is left.
    async fn run(self) {
        // Should a batch panic, the queue must not stay marked running with no task.
        struct Release<'a>(&'a SignupQueue);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                self.0.lock().running = false;
            }
        }
        let release = Release(&self);
        loop {
            let batch = {
                let mut state = self.lock();
                let batch = take_batch(&mut state.waiting);
                self.metrics.waiting.set(state.waiting.len() as i64);
                if batch.is_empty() {
                    state.running = false;
                    std::mem::forget(release);
                    return;
                }
                batch
            };
            self.metrics.batch_size.observe(batch.len() as f64);
            let (rows, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|w| (w.row, w.reply)).unzip();
            self.run_batch(&rows, replies).await;
        }
    }

    /// Apply `rows` in one statement and answer each caller. A statement the database
    /// refuses is applied again one webhook at a time, skipping callers that stopped
    /// waiting: during an outage every attempt waits out the pool's timeout, and the
    /// queue must not spend that on answers nobody reads.
    async fn run_batch(&self, rows: &[SignupRow], replies: Vec<Reply>) {
        let applied = run_pg_signup(&self.pg, self.signup_credits, rows).await;
        match applied {
            Ok(applied) => {
                for (reply, applied) in replies.into_iter().zip(applied) {
                    // The caller may have stopped waiting; its webhook was applied anyway.
                    let _ = reply.send(Ok(applied));
                }
            }
            Err(e) if rows.len() == 1 => {
                let reply = replies.into_iter().next().expect("one reply per row");
                let _ = reply.send(Err(e.into()));
            }
            Err(e) => {
                warn!(webhooks = rows.len(), error.message = %e,
                    "signup batch refused; applying its webhooks one at a time");
                for (row, reply) in rows.iter().zip(replies) {
                    if reply.is_closed() {
                        continue;
                    }
                    let alone = std::slice::from_ref(row);
                    let result = run_pg_signup(&self.pg, self.signup_credits, alone).await;
                    let _ = reply.send(result.map(|mut a| a.pop().flatten()).map_err(Into::into));
                }
            }
        }
    }
}

/// The payload bytes past which a batch takes no more webhooks (its first always goes):
/// a signed body may be 256 KiB, and 64 of them in one message would be 16 MiB.
const MAX_BATCH_PAYLOAD_BYTES: usize = 1024 * 1024;

/// The next batch: waiting webhooks in arrival order, up to [`MAX_BATCH`] and
/// [`MAX_BATCH_PAYLOAD_BYTES`], none in conflict with an earlier one (those wait for a
/// later batch, in order). Webhooks whose caller stopped waiting are dropped.
fn take_batch(waiting: &mut Vec<Waiting>) -> Vec<Waiting> {
    let mut batch: Vec<Waiting> = Vec::new();
    let mut bytes = 0;
    let mut later = Vec::new();
    for w in waiting.drain(..) {
        if w.reply.is_closed() {
            continue;
        }
        let fits = batch.is_empty()
            || (batch.len() < MAX_BATCH
                && bytes + w.row.payload_bytes() <= MAX_BATCH_PAYLOAD_BYTES);
        if fits && !batch.iter().any(|b| b.row.conflicts_with(&w.row)) {
            bytes += w.row.payload_bytes();
            batch.push(w);
        } else {
            later.push(w);
        }
    }
    *waiting = later;
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(clerk_id: &str, msg_id: &str, email: &str, payload_bytes: usize) -> SignupRow {
        SignupRow {
            event_row_id: new_id(),
            msg_id: msg_id.into(),
            event_type: "user.created".into(),
            payload: Some("x".repeat(payload_bytes)),
            clerk_id: clerk_id.into(),
            clerk_updated_at: 1,
            email: email.into(),
            photo: String::new(),
            first_name: None,
            last_name: None,
            user_id: new_id(),
            bonus_id: new_id(),
            signup_key: format!("signup:{clerk_id}"),
            job_id: new_id(),
            job_kind: "update_clerk_metadata",
            job_payload: "{}".into(),
        }
    }

    type Answer = oneshot::Receiver<Result<Option<Applied>, StoreError>>;

    /// Queue `rows`; the receivers must live for their webhooks to count as waited for.
    fn queue(rows: Vec<SignupRow>) -> (Vec<Waiting>, Vec<Answer>) {
        rows.into_iter()
            .map(|row| {
                let (reply, answer) = oneshot::channel();
                (Waiting { row, reply }, answer)
            })
            .unzip()
    }

    fn msg_ids(batch: &[Waiting]) -> Vec<&str> {
        batch.iter().map(|w| w.row.msg_id.as_str()).collect()
    }

    #[test]
    fn a_batch_never_holds_one_user_message_or_address_twice_and_keeps_order() {
        let (mut waiting, _answers) = queue(vec![
            row("user_a", "msg_1", "a@example.org", 10),
            row("user_a", "msg_2", "a@example.org", 10), // same user: later
            row("user_b", "msg_1", "b@example.org", 10), // same svix-id: later
            row("user_c", "msg_3", "a@example.org", 10), // same address: later
            row("user_d", "msg_4", "d@example.org", 10),
            row("user_a", "msg_5", "a2@example.org", 10), // same user: later
        ]);
        let first = take_batch(&mut waiting);
        assert_eq!(msg_ids(&first), ["msg_1", "msg_4"]);
        assert_eq!(msg_ids(&waiting), ["msg_2", "msg_1", "msg_3", "msg_5"]);
        let second = take_batch(&mut waiting);
        assert_eq!(msg_ids(&second), ["msg_2", "msg_1"]);
        assert_eq!(msg_ids(&waiting), ["msg_3", "msg_5"]);
    }

    #[test]
    fn a_batch_stops_at_its_count_and_payload_limits_but_always_takes_one() {
        let rows = (0..MAX_BATCH + 3)
            .map(|i| {
                row(
                    &format!("user_{i}"),
                    &format!("msg_{i}"),
                    &format!("{i}@example.org"),
                    1,
                )
            })
            .collect();
        let (mut waiting, _answers) = queue(rows);
        assert_eq!(take_batch(&mut waiting).len(), MAX_BATCH);
        assert_eq!(waiting.len(), 3);

        let big = MAX_BATCH_PAYLOAD_BYTES / 2 + 1;
        let (mut waiting, _answers) = queue(vec![
            row(
                "user_a",
                "msg_a",
                "a@example.org",
                MAX_BATCH_PAYLOAD_BYTES * 2,
            ),
            row("user_b", "msg_b", "b@example.org", big),
            row("user_c", "msg_c", "c@example.org", big),
        ]);
        assert_eq!(msg_ids(&take_batch(&mut waiting)), ["msg_a"]);
        assert_eq!(msg_ids(&take_batch(&mut waiting)), ["msg_b"]);
        assert_eq!(msg_ids(&take_batch(&mut waiting)), ["msg_c"]);
        assert!(take_batch(&mut waiting).is_empty());
    }

    #[test]
    fn webhooks_whose_caller_stopped_waiting_are_dropped() {
        let (mut waiting, mut answers) = queue(vec![
            row("user_a", "msg_a", "a@example.org", 1),
            row("user_b", "msg_b", "b@example.org", 1),
        ]);
        drop(answers.remove(0));
        assert_eq!(msg_ids(&take_batch(&mut waiting)), ["msg_b"]);
        assert!(waiting.is_empty());
    }
}
