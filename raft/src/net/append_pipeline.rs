//! Pipelined AppendEntries: openraft's replication hands a link a stream of
//! requests (`RaftNetworkV2::stream_append`), the next one ready as soon as
//! the leader's log has new entries. openraft's default sends one, waits
//! for its answer, then sends the next, so a follower's log sync, the
//! round trip and the leader's handling of the answer all come between two
//! groups of entries. Here up to [`APPEND_PIPELINE_DEPTH_MAX`] requests are
//! on their way at once, and their answers are handed back in the order
//! the requests were sent, as openraft requires.
//!
//! Order is what makes this safe. The requests of one stream leave on the
//! one connection to the peer, in the order they were taken (each call
//! queues its frame when first polled, and `FuturesOrdered` first polls
//! them in the order they were pushed); the peer's listener reads them in
//! that order and spawns one task per frame, which puts its call in the
//! group's bounded mailbox (flume: when it is full, waiting senders get in
//! first come, first served); the group's executor takes the calls in
//! that order and spawns one task per call, and each task's first poll
//! gives its request to the follower's Raft core (again through a flume
//! channel). So the follower's core sees them in the order the
//! leader sent them — a later request never arrives before the one whose
//! entries it follows.
//!
//! The stream ends after the first answer that is not a full success (an
//! error, a conflict, a higher vote, or a partial success that stopped
//! short of the request's last entry): the answers to requests behind it
//! describe a log that no longer follows from what the leader knows, so
//! they are dropped unread and openraft starts a new stream from what was
//! acknowledged.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::FuturesOrdered;
use futures_util::{Stream, StreamExt};
use openraft::errors::RPCError;
use openraft::network::RPCOption;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, StreamAppendResult};
use openraft::type_config::alias::LogIdOf;

use super::network::PeerLink;
use crate::log_store::WalTypes;

/// AppendEntries requests of one group to one peer on their way at once.
/// Each carries what the leader's log gained since the one before, so a
/// few suffice to keep a follower's sync busy: on 3 nodes under applies
/// 16×16 through the leader, 4 measured +17 % over one at a time, and 2
/// and 8 the same as each other, at 4's level
/// (`bench-results/2026-12-08/append-pipeline-ab/`). The peer link's own
/// bound (`PEER_REQUESTS_IN_FLIGHT_MAX`, shared by every group on the
/// link) is larger.
pub const APPEND_PIPELINE_DEPTH_MAX: usize = 4;

type Answer<C> = (
    Option<LogIdOf<C>>,
    Option<LogIdOf<C>>,
    Result<AppendEntriesResponse<C>, RPCError<C>>,
);

/// The stream of answers `stream_append` returns.
pub(super) struct AppendPipeline<'s, C: WalTypes, S, St> {
    link: &'s PeerLink<C, S>,
    /// `None` once openraft's request stream has ended.
    input: Option<St>,
    in_flight: FuturesOrdered<Pin<Box<dyn Future<Output = Answer<C>> + 's>>>,
    option: RPCOption,
    /// Set after the answer that ends the stream.
    ended: bool,
}

impl<'s, C, S, St> AppendPipeline<'s, C, S, St>
where
    C: WalTypes,
    S: 's,
    St: Stream<Item = AppendEntriesRequest<C>> + Unpin,
{
    pub(super) fn new(link: &'s PeerLink<C, S>, input: St, option: RPCOption) -> Self {
        AppendPipeline {
            link,
            input: Some(input),
            in_flight: FuturesOrdered::new(),
            option,
            ended: false,
        }
    }

    /// Takes the requests openraft has ready, while there is room.
    fn take_requests(&mut self, cx: &mut Context<'_>) {
        while self.in_flight.len() < APPEND_PIPELINE_DEPTH_MAX {
            let Some(input) = self.input.as_mut() else {
                return;
            };
            match input.poll_next_unpin(cx) {
                Poll::Ready(Some(request)) => {
                    let prev = request.prev_log_id;
                    let last = request.entries.last().map(|e| e.log_id).or(prev);
                    let (link, option) = (self.link, self.option.clone());
                    self.in_flight.push_back(Box::pin(async move {
                        (prev, last, link.send_append(request, &option).await)
                    }));
                }
                Poll::Ready(None) => self.input = None,
                Poll::Pending => return,
            }
        }
    }
}

impl<'s, C, S, St> Stream for AppendPipeline<'s, C, S, St>
where
    C: WalTypes,
    S: 's,
    St: Stream<Item = AppendEntriesRequest<C>> + Unpin,
{
    type Item = Result<StreamAppendResult<C>, RPCError<C>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        this.take_requests(cx);
        match this.in_flight.poll_next_unpin(cx) {
            Poll::Ready(Some((prev, last, answer))) => {
                let item = match answer {
                    Ok(answer) => {
                        let whole = match &answer {
                            AppendEntriesResponse::PartialSuccess(upto) => *upto == last,
                            other => !other.is_conflict(),
                        };
                        let result = answer.into_stream_result(prev, last);
                        this.ended = !whole || result.is_err();
                        Ok(result)
                    }
                    Err(err) => {
                        this.ended = true;
                        Err(err)
                    }
                };
                if this.ended {
                    this.input = None;
                    this.in_flight = FuturesOrdered::new();
                } else {
                    // Room for the next request now.
                    this.take_requests(cx);
                }
                Poll::Ready(Some(item))
            }
            // Nothing on its way: done if openraft sends nothing more, else
            // woken by its next request (the poll above registered us).
            Poll::Ready(None) if this.input.is_none() => Poll::Ready(None),
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }
}
