//! The merge's task on each acceptor core: take the publications, release,
//! wake the subscribers' connections, nudge idle shards, feed the other
//! cores' replicas — and, while nobody watches, take publications in bulk
//! (`crate::watch::demand`).

use std::cell::RefCell;
use std::rc::Rc;

use shards::shard::events::Publication;
use shards::shard::ShardMsg;

use crate::watch::merge::Merger;

/// The merger's task: take publications, release, wake connections, and
/// nudge idle shards whose watermark holds the merge back.
///
/// Two levels (`crate::server::cores`): on core 0 the primary merges the
/// shards' publications and forwards what it released, with its new
/// release point, to each other acceptor core (`relays`); there a replica
/// runs this same task with the primary as its one "shard" (no mailboxes
/// to nudge: everything it is sent is released already).
pub async fn run(
    merger: Rc<RefCell<Merger>>,
    publications: flume::Receiver<Publication>,
    mailboxes: Vec<flume::Sender<ShardMsg>>,
    relays: Vec<flume::Sender<Publication>>,
) {
    while let Ok(first) = publications.recv_async().await {
        let unwatched = {
            let mut m = merger.borrow_mut();
            let before = m.released_upto();
            m.accept(first);
            while let Ok(p) = publications.try_recv() {
                m.accept(p);
            }
            let released = m.release();
            // Subscribers reading the logs wait for the shard that lagged too.
            if released > 0 || m.take_history_grew() {
                m.wake_all();
            }
            for shard in m.shards_to_advance() {
                let _ = mailboxes[shard].send(ShardMsg::AdvanceWatermark);
            }
            if !relays.is_empty() && m.released_upto() > before {
                let events = m.take_released();
                for relay in &relays {
                    let _ = relay.send(Publication {
                        shard: 0,
                        events: events.clone(),
                        watermark: m.released_upto(),
                        history_upto: m.spilled_upto(),
                    });
                }
            }
            m.unwatched_seat()
        };
        // Nobody reads this merge: let the next publications queue without
        // waking this core for each (a first watcher kicks it).
        if let Some(seat) = unwatched {
            seat.demand.linger(seat.core).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::watch::demand::{Seat, WatchDemand};

    fn publication(offset: u64, watermark: u64) -> Publication {
        Publication {
            shard: 0,
            events: vec![crate::watch::merge::tests::ev(offset)],
            watermark,
            history_upto: 0,
        }
    }

    async fn released_reaches(merger: &Rc<RefCell<Merger>>, upto: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while merger.borrow().released_upto() < upto {
            assert!(
                Instant::now() < deadline,
                "the merge never released up to {upto}"
            );
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    #[test]
    fn unwatched_publications_wait_for_the_linger_and_a_first_watcher_takes_them_at_once() {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(|| async {
                // A linger no test outlives: only a kick ends it.
                let demand = WatchDemand::lingering(1, Duration::from_secs(3600));
                let merger = Rc::new(RefCell::new(Merger::new(vec![0]).with_seat(Seat {
                    demand: demand.clone(),
                    core: 0,
                })));
                let (tx, rx) = flume::unbounded();
                glommio::spawn_local(run(merger.clone(), rx, Vec::new(), Vec::new())).detach();

                // The first publication wakes the merge; then it lingers.
                tx.send(publication(10, 20)).unwrap();
                released_reaches(&merger, 20).await;
                tx.send(publication(30, 40)).unwrap();
                glommio::timer::sleep(Duration::from_millis(50)).await;
                assert_eq!(
                    merger.borrow().released_upto(),
                    20,
                    "taken during the linger"
                );

                // A watcher arrives: the queued publication is merged now,
                // into the ring, and the watcher is woken.
                let (waker, woken) = flume::bounded(1);
                let waker = Rc::new(waker);
                merger.borrow_mut().register_waker(&waker);
                released_reaches(&merger, 40).await;
                assert!(woken.try_recv().is_ok());
                let held: Vec<u64> = merger
                    .borrow()
                    .events_from(30, 10)
                    .unwrap()
                    .iter()
                    .map(|e| e.offset)
                    .collect();
                assert_eq!(held, vec![30]);

                // Watched, every publication is taken as it comes.
                tx.send(publication(50, 60)).unwrap();
                released_reaches(&merger, 60).await;
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
