//! Every call to the shards goes through here: which shard owns an
//! instance, and the two shapes a call takes — `ask` one shard and await its
//! answer, or `ask_all` of them and await every answer (the merge is the
//! caller's: a sum, a sorted page, a list). Each is one visible hop per
//! shard: the message goes into the shard's mailbox, the answer comes back
//! on a one-shot channel made for it.
//!
//! `ask_all` sends to every shard before it awaits the first answer, so the
//! shards work at the same time.

use std::future::Future;
use std::pin::pin;

use futures_lite::future;

use crate::error::{EngineError, EngineResult};
use crate::shard::{shard_for_instance, ShardMsg};

/// A shard's mailbox.
pub type Mailbox = flume::Sender<ShardMsg>;

/// The shards' mailboxes, indexed by shard id.
#[derive(Clone)]
pub struct Router {
    mailboxes: Vec<Mailbox>,
}

impl Router {
    pub fn new(mailboxes: Vec<Mailbox>) -> Self {
        Router { mailboxes }
    }

    pub fn shards(&self) -> usize {
        self.mailboxes.len()
    }

    /// The shard that owns `instance_id`.
    pub fn owner_of(&self, instance_id: &str) -> usize {
        shard_for_instance(instance_id, self.mailboxes.len())
    }

    /// The mailbox of the shard that owns `instance_id`.
    pub fn owner(&self, instance_id: &str) -> &Mailbox {
        &self.mailboxes[self.owner_of(instance_id)]
    }

    pub fn all(&self) -> &[Mailbox] {
        &self.mailboxes
    }

    /// Ask shard `shard`; its answer.
    pub async fn ask<T>(
        &self,
        shard: usize,
        make: impl FnOnce(flume::Sender<T>) -> ShardMsg,
    ) -> EngineResult<T> {
        ask(&self.mailboxes[shard], make).await
    }

    /// Ask every shard; their answers, in shard order.
    pub async fn ask_all<T>(
        &self,
        make: impl FnMut(flume::Sender<T>) -> ShardMsg,
    ) -> EngineResult<Vec<T>> {
        ask_all(&self.mailboxes, make).await
    }
}

fn mailbox_closed() -> EngineError {
    EngineError::internal("shard mailbox closed")
}

fn shard_gone() -> EngineError {
    EngineError::internal("shard stopped before answering")
}

/// Ask the shard behind `mailbox`; its answer.
pub async fn ask<T>(
    mailbox: &Mailbox,
    make: impl FnOnce(flume::Sender<T>) -> ShardMsg,
) -> EngineResult<T> {
    let (tx, rx) = flume::bounded(1);
    mailbox.send(make(tx)).map_err(|_| mailbox_closed())?;
    rx.recv_async().await.map_err(|_| shard_gone())
}

/// Ask every shard at once; their answers, in shard order.
pub async fn ask_all<T>(
    mailboxes: &[Mailbox],
    mut make: impl FnMut(flume::Sender<T>) -> ShardMsg,
) -> EngineResult<Vec<T>> {
    let mut waits = Vec::with_capacity(mailboxes.len());
    for mailbox in mailboxes {
        let (tx, rx) = flume::bounded(1);
        mailbox.send(make(tx)).map_err(|_| mailbox_closed())?;
        waits.push(rx);
    }
    let mut answers = Vec::with_capacity(waits.len());
    for rx in waits {
        answers.push(rx.recv_async().await.map_err(|_| shard_gone())?);
    }
    Ok(answers)
}

/// Ask every shard at once and take what has come when `deadline` completes:
/// `None` for a shard that could not be asked or had not answered by then
/// (for shutdown and metrics, which must not hang on a stuck shard). Generic
/// over the message, so the server's acceptor cores are asked the same way.
pub async fn ask_all_until<M, T>(
    mailboxes: &[flume::Sender<M>],
    mut make: impl FnMut(flume::Sender<T>) -> M,
    deadline: impl Future<Output = ()>,
) -> Vec<Option<T>> {
    let waits: Vec<Option<flume::Receiver<T>>> = mailboxes
        .iter()
        .map(|mailbox| {
            let (tx, rx) = flume::bounded(1);
            mailbox.send(make(tx)).is_ok().then_some(rx)
        })
        .collect();
    let mut deadline = pin!(deadline);
    let mut passed = false;
    let mut answers = Vec::with_capacity(waits.len());
    for rx in waits {
        let Some(rx) = rx else {
            answers.push(None);
            continue;
        };
        if passed {
            answers.push(rx.try_recv().ok());
            continue;
        }
        let answer = future::or(async { rx.recv_async().await.ok() }, async {
            deadline.as_mut().await;
            passed = true;
            None
        })
        .await;
        answers.push(answer);
    }
    answers
}
