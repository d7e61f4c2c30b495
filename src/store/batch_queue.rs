//! Group commit on PostgreSQL: requests that arrive while a statement runs share the next.
//!
//! Requests that arrive while the database is busy wait here and go to it together, as
//! ONE statement: one round trip, one plan and one commit for the group. A request that
//! finds the queue idle goes at once, alone, so the queue costs no latency when the
//! service is quiet.
//!
//! One statement at a time per queue, from a task spawned when work arrives and ended when
//! the queue is empty. Measured on 2 cores (bench/README.md): for signups one queue
//! beat one per pooled connection, whose smaller batches each paid a plan and a commit;
//! for consumes one statement at a time beat two to four running at once (about 6,000
//! against 4,000 req/s at C = 16), and so it did for signups (4,188–4,887 against
//! 2,451–2,875 req/s with two or three: smaller batches, twice PostgreSQL's CPU per
//! signup). Scaling out is more replicas; their statements meet in
//! PostgreSQL, whose row locks and unique indexes decide.
//!
//! Requests in conflict ([`Batched::conflicts`], e.g. two of one user) are never in one
//! statement, and are applied in arrival order. A caller that stops waiting (its timeout, a
//! closed connection) is dropped from the queue before its request is sent. A batch the
//! database refuses (a constraint, a deadlock with another writer) is applied again one
//! request at a time, so each gets its own answer.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tracing::warn;

use super::StoreError;
use crate::metrics::QueueMetrics;

/// What a [`BatchQueue`] sends to the database: one statement for many requests.
pub trait Batched: Clone + Send + Sync + 'static {
    /// One caller's request.
    type Request: std::fmt::Debug + Send + Sync + 'static;
    /// The statement's answer to one request.
    type Answer: std::fmt::Debug + Send + 'static;
    /// What the queue's warnings call a request ("webhooks").
    const NAME: &'static str;
    /// The most requests in one statement.
    const MAX_BATCH: usize = 64;
    /// The bytes past which a batch takes no more requests (its first always goes).
    const MAX_BATCH_BYTES: usize = usize::MAX;

    /// Whether two requests must go to the database in different statements.
    fn conflicts(a: &Self::Request, b: &Self::Request) -> bool;

    /// A request's size, counted against [`Self::MAX_BATCH_BYTES`].
    fn bytes(_request: &Self::Request) -> usize {
        0
    }

    /// Run ONE statement for `requests` (at least one, no two in conflict): an answer
    /// per request, in their order, or the error that refused them all.
    fn run(
        &self,
        requests: &[Self::Request],
    ) -> impl Future<Output = Result<Vec<Self::Answer>, StoreError>> + Send;
}

/// Requests waiting for their statement; see the module's documentation.
#[derive(Debug)]
pub struct BatchQueue<B: Batched> {
    runner: B,
    state: Arc<Mutex<QueueState<B>>>,
    metrics: QueueMetrics,
}

impl<B: Batched> Clone for BatchQueue<B> {
    fn clone(&self) -> Self {
        Self {
            runner: self.runner.clone(),
            state: self.state.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Debug)]
struct QueueState<B: Batched> {
    waiting: Vec<Waiting<B>>,
    /// A task is applying the queue's requests.
    running: bool,
}

#[derive(Debug)]
struct Waiting<B: Batched> {
    request: B::Request,
    reply: Reply<B>,
}

type Reply<B> = oneshot::Sender<Result<<B as Batched>::Answer, StoreError>>;

impl<B: Batched> BatchQueue<B> {
    pub fn new(runner: B, metrics: QueueMetrics) -> Self {
        Self {
            runner,
            state: Arc::new(Mutex::new(QueueState {
                waiting: Vec::new(),
                running: false,
            })),
            metrics,
        }
    }

    /// Queue `request` and wait for its statement's answer.
    pub async fn apply(&self, request: B::Request) -> Result<B::Answer, StoreError> {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            state.waiting.push(Waiting { request, reply });
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

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState<B>> {
        // A list and a flag: valid after any panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Apply the waiting requests, a batch at a time, until none is left.
    async fn run(self) {
        // Should a batch panic, the queue must not stay marked running with no task.
        struct Release<'a, B: Batched>(&'a BatchQueue<B>);
        impl<B: Batched> Drop for Release<'_, B> {
            fn drop(&mut self) {
                self.0.lock().running = false;
            }
        }
        let release = Release(&self);
        loop {
            let batch = {
                let mut state = self.lock();
                let batch = take_batch::<B>(&mut state.waiting);
                self.metrics.waiting.set(state.waiting.len() as i64);
                if batch.is_empty() {
                    state.running = false;
                    std::mem::forget(release);
                    return;
                }
                batch
            };
            self.metrics.batch_size.observe(batch.len() as f64);
            let (requests, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|w| (w.request, w.reply)).unzip();
            self.run_batch(&requests, replies).await;
        }
    }

    /// Apply `requests` in one statement and answer each caller. A statement the database
    /// refuses is applied again one request at a time, skipping callers that stopped
    /// waiting: during an outage every attempt waits out the pool's timeout, and the
    /// queue must not spend that on answers nobody reads.
    async fn run_batch(&self, requests: &[B::Request], replies: Vec<Reply<B>>) {
        match self.runner.run(requests).await {
            Ok(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // The caller may have stopped waiting; its request was applied anyway.
                    let _ = reply.send(Ok(answer));
                }
            }
            Err(e) if requests.len() == 1 => {
                let reply = replies.into_iter().next().expect("one reply per request");
                let _ = reply.send(Err(e));
            }
            Err(e) => {
                warn!(requests = requests.len(), kind = B::NAME, error.message = %e,
                    "batch refused; applying its requests one at a time");
                for (request, reply) in requests.iter().zip(replies) {
                    if reply.is_closed() {
                        continue;
                    }
                    let alone = self.runner.run(std::slice::from_ref(request)).await;
                    let answer = alone.map(|mut answers| {
                        answers.pop().expect("the statement answers each request")
                    });
                    let _ = reply.send(answer);
                }
            }
        }
    }
}

/// The next batch: waiting requests in arrival order, up to [`Batched::MAX_BATCH`] and
/// [`Batched::MAX_BATCH_BYTES`], none in conflict with an earlier one, taken or left
/// waiting (those wait for a later batch, in order). Requests whose caller stopped
/// waiting are dropped.
fn take_batch<B: Batched>(waiting: &mut Vec<Waiting<B>>) -> Vec<Waiting<B>> {
    let mut batch: Vec<Waiting<B>> = Vec::new();
    let mut bytes = 0;
    let mut later = Vec::new();
    for w in waiting.drain(..) {
        if w.reply.is_closed() {
            continue;
        }
        let size = B::bytes(&w.request);
        let fits =
            batch.is_empty() || (batch.len() < B::MAX_BATCH && bytes + size <= B::MAX_BATCH_BYTES);
        // Conflict is not transitive (a webhook may share its email address with one
        // request and its user with another), so a request must also wait behind every
        // request already left for later that it conflicts with: otherwise a user's later
        // event could go before its earlier one.
        let free = |r: &B::Request| {
            !batch.iter().any(|b| B::conflicts(&b.request, r))
                && !later
                    .iter()
                    .any(|l: &Waiting<B>| B::conflicts(&l.request, r))
        };
        if fits && free(&w.request) {
            bytes += size;
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

    /// Requests are keys; keys in conflict share their first letter. Each statement is
    /// recorded; with `refuse_batches`, a statement of more than one request fails, and
    /// a request "x…" always fails.
    #[derive(Debug, Clone, Default)]
    struct Letters {
        statements: Arc<Mutex<Vec<Vec<&'static str>>>>,
        refuse_batches: bool,
    }

    impl Batched for Letters {
        type Request = (&'static str, usize);
        type Answer = &'static str;
        const NAME: &'static str = "letters";
        const MAX_BATCH: usize = 4;
        const MAX_BATCH_BYTES: usize = 100;

        fn conflicts(a: &Self::Request, b: &Self::Request) -> bool {
            a.0.as_bytes()[0] == b.0.as_bytes()[0]
        }

        fn bytes(request: &Self::Request) -> usize {
            request.1
        }

        async fn run(&self, requests: &[Self::Request]) -> Result<Vec<Self::Answer>, StoreError> {
            let keys: Vec<_> = requests.iter().map(|r| r.0).collect();
            self.statements.lock().unwrap().push(keys.clone());
            tokio::task::yield_now().await;
            if (self.refuse_batches && keys.len() > 1) || keys.iter().any(|k| k.starts_with('x')) {
                return Err(StoreError::Other("refused".into()));
            }
            Ok(keys)
        }
    }

    type Answer = oneshot::Receiver<Result<&'static str, StoreError>>;

    /// Queue `requests`; the receivers must live for their requests to count as waited for.
    fn queue(requests: &[(&'static str, usize)]) -> (Vec<Waiting<Letters>>, Vec<Answer>) {
        requests
            .iter()
            .map(|&request| {
                let (reply, answer) = oneshot::channel();
                (Waiting { request, reply }, answer)
            })
            .unzip()
    }

    fn keys(batch: &[Waiting<Letters>]) -> Vec<&str> {
        batch.iter().map(|w| w.request.0).collect()
    }

    #[test]
    fn a_batch_never_holds_two_requests_in_conflict_and_keeps_order() {
        let (mut waiting, _answers) =
            queue(&[("a1", 1), ("a2", 1), ("b1", 1), ("a3", 1), ("c1", 1)]);
        let first = take_batch(&mut waiting);
        assert_eq!(keys(&first), ["a1", "b1", "c1"]);
        assert_eq!(keys(&waiting), ["a2", "a3"]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["a2"]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["a3"]);
        assert!(take_batch(&mut waiting).is_empty());
    }

    /// Keys conflict when they share a letter ("ax" conflicts with "xb", and "xb" with
    /// "bc", but "ax" not with "bc"): "bc" must not overtake "xb", which waits behind "ax".
    #[test]
    fn a_request_waits_behind_a_waiting_request_it_conflicts_with() {
        #[derive(Debug, Clone)]
        struct Shared;
        impl Batched for Shared {
            type Request = &'static str;
            type Answer = ();
            const NAME: &'static str = "shared letters";
            fn conflicts(a: &Self::Request, b: &Self::Request) -> bool {
                a.chars().any(|c| b.contains(c))
            }
            async fn run(&self, _: &[Self::Request]) -> Result<Vec<()>, StoreError> {
                unreachable!("only batches are taken")
            }
        }
        let (mut waiting, _answers): (Vec<Waiting<Shared>>, Vec<_>) = ["ax", "xb", "bc", "de"]
            .into_iter()
            .map(|request| {
                let (reply, answer) = oneshot::channel::<Result<(), StoreError>>();
                (Waiting { request, reply }, answer)
            })
            .unzip();
        let keys = |batch: &[Waiting<Shared>]| batch.iter().map(|w| w.request).collect::<Vec<_>>();
        assert_eq!(keys(&take_batch(&mut waiting)), ["ax", "de"]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["xb"]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["bc"]);
        assert!(waiting.is_empty());
    }

    #[test]
    fn a_batch_stops_at_its_count_and_byte_limits_but_always_takes_one() {
        let (mut waiting, _answers) =
            queue(&[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1), ("f", 1)]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["a", "b", "c", "d"]);
        assert_eq!(keys(&waiting), ["e", "f"]);

        let (mut waiting, _answers) = queue(&[("a", 250), ("b", 51), ("c", 51)]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["a"]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["b"]);
        assert_eq!(keys(&take_batch(&mut waiting)), ["c"]);
        assert!(take_batch(&mut waiting).is_empty());
    }

    #[test]
    fn requests_whose_caller_stopped_waiting_are_dropped() {
        let (mut waiting, mut answers) = queue(&[("a", 1), ("b", 1)]);
        drop(answers.remove(0));
        assert_eq!(keys(&take_batch(&mut waiting)), ["b"]);
        assert!(waiting.is_empty());
    }

    /// Send `keys` at once (a current-thread runtime runs the queue's task only once all
    /// are queued); each caller's answer, in order.
    async fn apply_all(
        queue: &BatchQueue<Letters>,
        keys: &[&'static str],
    ) -> Vec<Result<&'static str, String>> {
        let calls = keys.iter().map(|&key| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.apply((key, 1)).await.map_err(|e| e.to_string()) })
        });
        let calls: Vec<_> = calls.collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.expect("no panic"));
        }
        assert!(!queue.lock().running, "the task ends with the queue empty");
        answers
    }

    #[tokio::test]
    async fn waiting_requests_share_statements_and_each_caller_gets_its_own_answer() {
        let letters = Letters::default();
        let queue = BatchQueue::new(letters.clone(), QueueMetrics::default());
        let answers = apply_all(&queue, &["a1", "a2", "b1", "c1"]).await;
        assert_eq!(answers, [Ok("a1"), Ok("a2"), Ok("b1"), Ok("c1")]);
        let statements = letters.statements.lock().unwrap().clone();
        assert_eq!(statements, [vec!["a1", "b1", "c1"], vec!["a2"]]);
    }

    #[tokio::test]
    async fn a_refused_batch_is_applied_again_one_request_at_a_time() {
        let letters = Letters {
            refuse_batches: true,
            ..Letters::default()
        };
        let queue = BatchQueue::new(letters.clone(), QueueMetrics::default());
        let answers = apply_all(&queue, &["a", "b", "x", "c"]).await;
        let refused = Err("database error".to_owned());
        assert_eq!(answers, [Ok("a"), Ok("b"), refused, Ok("c")]);
        let statements = letters.statements.lock().unwrap().clone();
        assert_eq!(
            statements,
            [
                vec!["a", "b", "x", "c"],
                vec!["a"],
                vec!["b"],
                vec!["x"],
                vec!["c"]
            ]
        );
    }
}
