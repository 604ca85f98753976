//! The channels and the mutex openraft's runtime asks for, on crates that
//! work on any executor (they only use wakers), each picked for a contract
//! glommio's own primitives do not meet:
//!
//! * **MPSC: `flume` bounded channels** — the same crate as the shard
//!   mailboxes. openraft relies on exact capacity (a send waits once
//!   `buffer` items are queued; `futures-channel` allows one extra item per
//!   sender) and on weak senders that do not keep the channel open; flume
//!   has both, glommio's `local_channel` has no weak sender.
//! * **Oneshot: `futures-channel`** — already in openraft's own dependency
//!   tree; its sender hands the value back when the receiver is gone.
//! * **Watch: `tokio::sync::watch`** with only tokio's `sync` feature (no
//!   tokio runtime): openraft's watch contract (seen versions,
//!   `borrow_and_update`, `send_if_modified`, `subscribe`, a send that fails
//!   once every receiver is gone) is tokio's, and tokio's is the
//!   best-tested implementation of it. Its `Ref` holds a read lock: never
//!   keep one across an `.await`, or a send on the same thread deadlocks.
//! * **Mutex: `futures-util`'s async mutex**, also already in the tree.
//!
//! The thread-safe internals (atomics) of these cost a few nanoseconds per
//! operation on one thread; Raft's per-entry cost is dominated by the log
//! sync, so a hand-written single-threaded set was not worth its bugs.

use std::future::Future;

use openraft::rt::mpsc::{Mpsc, MpscReceiver, MpscSender, MpscWeakSender, SendError, TryRecvError};
use openraft::rt::watch::{self, RecvError, Watch, WatchReceiver, WatchSender};
use openraft::rt::{Mutex, Oneshot, OneshotSender};
use openraft::{OptionalSend, OptionalSync};

/// Bounded MPSC channels on flume.
pub struct FlumeMpsc;

/// The sending half of a [`FlumeMpsc`] channel.
pub struct MpscTx<T>(flume::Sender<T>);

/// The receiving half of a [`FlumeMpsc`] channel.
pub struct MpscRx<T>(flume::Receiver<T>);

/// A sender that does not keep a [`FlumeMpsc`] channel open.
pub struct MpscWeakTx<T>(flume::WeakSender<T>);

impl<T> Clone for MpscTx<T> {
    fn clone(&self) -> Self {
        MpscTx(self.0.clone())
    }
}

impl<T> Clone for MpscWeakTx<T> {
    fn clone(&self) -> Self {
        MpscWeakTx(self.0.clone())
    }
}

impl Mpsc for FlumeMpsc {
    type Sender<T: OptionalSend> = MpscTx<T>;
    type Receiver<T: OptionalSend> = MpscRx<T>;
    type WeakSender<T: OptionalSend> = MpscWeakTx<T>;

    fn channel<T: OptionalSend>(buffer: usize) -> (Self::Sender<T>, Self::Receiver<T>) {
        // flume reads 0 as a rendezvous channel; openraft always asks for
        // room (tokio, its default, panics on 0).
        debug_assert!(buffer > 0, "an MPSC channel needs room for one item");
        let (tx, rx) = flume::bounded(buffer);
        (MpscTx(tx), MpscRx(rx))
    }
}

impl<T: OptionalSend> MpscSender<FlumeMpsc, T> for MpscTx<T> {
    fn send(&self, msg: T) -> impl Future<Output = Result<(), SendError<T>>> + OptionalSend {
        let sending = self.0.send_async(msg);
        async move {
            sending
                .await
                .map_err(|flume::SendError(msg)| SendError(msg))
        }
    }

    fn downgrade(&self) -> MpscWeakTx<T> {
        MpscWeakTx(self.0.downgrade())
    }
}

impl<T: OptionalSend> MpscReceiver<T> for MpscRx<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + OptionalSend {
        let receiving = self.0.recv_async();
        async move { receiving.await.ok() }
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map_err(|err| match err {
            flume::TryRecvError::Empty => TryRecvError::Empty,
            flume::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })
    }
}

impl<T: OptionalSend> MpscWeakSender<FlumeMpsc, T> for MpscWeakTx<T> {
    fn upgrade(&self) -> Option<MpscTx<T>> {
        self.0.upgrade().map(MpscTx)
    }
}

/// One-shot channels on futures-channel.
pub struct FuturesOneshot;

/// The sending half of a [`FuturesOneshot`] channel.
pub struct OneshotTx<T>(futures_channel::oneshot::Sender<T>);

impl Oneshot for FuturesOneshot {
    type Sender<T: OptionalSend> = OneshotTx<T>;
    type Receiver<T: OptionalSend> = futures_channel::oneshot::Receiver<T>;
    type ReceiverError = futures_channel::oneshot::Canceled;

    fn channel<T: OptionalSend>() -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = futures_channel::oneshot::channel();
        (OneshotTx(tx), rx)
    }
}

impl<T: OptionalSend> OneshotSender<T> for OneshotTx<T> {
    fn send(self, value: T) -> Result<(), T> {
        self.0.send(value)
    }
}

/// Watch channels on `tokio::sync::watch`.
pub struct TokioWatch;

/// The sending half of a [`TokioWatch`] channel.
pub struct WatchTx<T>(tokio::sync::watch::Sender<T>);

/// A receiving half of a [`TokioWatch`] channel.
pub struct WatchRx<T>(tokio::sync::watch::Receiver<T>);

impl<T> Clone for WatchTx<T> {
    fn clone(&self) -> Self {
        WatchTx(self.0.clone())
    }
}

impl<T> Clone for WatchRx<T> {
    fn clone(&self) -> Self {
        WatchRx(self.0.clone())
    }
}

impl Watch for TokioWatch {
    type Sender<T: OptionalSend + OptionalSync> = WatchTx<T>;
    type Receiver<T: OptionalSend + OptionalSync> = WatchRx<T>;
    type Ref<'a, T: OptionalSend + 'a> = tokio::sync::watch::Ref<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = tokio::sync::watch::channel(init);
        (WatchTx(tx), WatchRx(rx))
    }
}

impl<T: OptionalSend + OptionalSync> WatchSender<TokioWatch, T> for WatchTx<T> {
    fn send(&self, value: T) -> Result<(), watch::SendError<T>> {
        self.0
            .send(value)
            .map_err(|tokio::sync::watch::error::SendError(value)| watch::SendError(value))
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        self.0.send_if_modified(modify)
    }

    fn borrow_watched(&self) -> tokio::sync::watch::Ref<'_, T> {
        self.0.borrow()
    }

    fn subscribe(&self) -> WatchRx<T> {
        WatchRx(self.0.subscribe())
    }
}

impl<T: OptionalSend + OptionalSync> WatchReceiver<TokioWatch, T> for WatchRx<T> {
    async fn changed(&mut self) -> Result<(), RecvError> {
        self.0.changed().await.map_err(|_sender_gone| RecvError(()))
    }

    fn borrow_watched(&self) -> tokio::sync::watch::Ref<'_, T> {
        self.0.borrow()
    }

    fn borrow_and_update(&mut self) -> tokio::sync::watch::Ref<'_, T> {
        self.0.borrow_and_update()
    }
}

/// An async mutex on futures-util.
pub struct LocalMutex<T>(futures_util::lock::Mutex<T>);

impl<T: OptionalSend + 'static> Mutex<T> for LocalMutex<T> {
    type Guard<'a> = futures_util::lock::MutexGuard<'a, T>;

    fn new(value: T) -> Self {
        LocalMutex(futures_util::lock::Mutex::new(value))
    }

    fn lock(&self) -> impl Future<Output = Self::Guard<'_>> + OptionalSend {
        self.0.lock()
    }
}
