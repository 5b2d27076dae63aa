//! Streams read together by one task: a [`Share`] polls each of its streams with a waker of
//! its own, so a task woken by some of them reads only those (the watch benchmark reads a
//! client's watchers so, one task wake-up for all of them).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::StreamExt;

/// A reading task's streams. Each is polled with a waker of its own, which notes it as woken
/// and wakes the task; at each wake-up the task reads only the streams noted, each until it
/// has nothing more (one task wake-up serves every watch of a client that hears of a change,
/// and no stream is polled for nothing).
pub struct Share<S> {
    streams: Vec<Option<S>>,
    wakers: Vec<(Arc<StreamWaker>, Waker)>,
    woken: Arc<Woken>,
    live: usize,
}

/// The streams of a [`Share`] woken since the task last looked, and the task's waker.
struct Woken {
    streams: Mutex<Vec<usize>>,
    task: futures_util::task::AtomicWaker,
}

/// The waker one stream of a [`Share`] is polled with.
struct StreamWaker {
    index: usize,
    /// Whether the stream is in [`Woken::streams`] (so it goes in once).
    noted: AtomicBool,
    woken: Arc<Woken>,
}

impl futures_util::task::ArcWake for StreamWaker {
    fn wake_by_ref(this: &Arc<Self>) {
        if !this.noted.swap(true, Ordering::AcqRel) {
            this.woken.streams.lock().unwrap_or_else(|p| p.into_inner()).push(this.index);
            this.woken.task.wake();
        }
    }
}

impl<S: futures_util::Stream + Unpin> Share<S> {
    /// Every stream noted as woken, so the first poll reads them all.
    pub fn new(streams: Vec<S>) -> Share<S> {
        let woken = Arc::new(Woken {
            streams: Mutex::new((0..streams.len()).collect()),
            task: futures_util::task::AtomicWaker::new(),
        });
        let wakers = (0..streams.len())
            .map(|index| {
                let noted = AtomicBool::new(true);
                let note = Arc::new(StreamWaker { index, noted, woken: woken.clone() });
                (note.clone(), futures_util::task::waker(note))
            })
            .collect();
        let live = streams.len();
        Share { streams: streams.into_iter().map(Some).collect(), wakers, woken, live }
    }

    /// Reads the woken streams, passing each message to `received`; ready once every stream
    /// has ended.
    pub fn poll(&mut self, cx: &mut Context<'_>, mut received: impl FnMut(S::Item)) -> Poll<()> {
        if let [Some(stream)] = &mut self.streams[..] {
            // One stream is polled with the task's own waker.
            while let Poll::Ready(next) = stream.poll_next_unpin(cx) {
                let Some(message) = next else {
                    self.streams[0] = None;
                    self.live = 0;
                    return Poll::Ready(());
                };
                received(message);
            }
            return Poll::Pending;
        }
        self.woken.task.register(cx.waker());
        let woken =
            std::mem::take(&mut *self.woken.streams.lock().unwrap_or_else(|p| p.into_inner()));
        for index in woken {
            let (note, waker) = &self.wakers[index];
            // Cleared before reading: a message that arrives meanwhile notes it again.
            note.noted.store(false, Ordering::Release);
            let Some(stream) = &mut self.streams[index] else { continue };
            let mut stream_cx = Context::from_waker(waker);
            loop {
                match stream.poll_next_unpin(&mut stream_cx) {
                    Poll::Ready(Some(message)) => received(message),
                    Poll::Ready(None) => {
                        self.streams[index] = None;
                        self.live -= 1;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }
        if self.live == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::AtomicU64;
    use std::time::Duration;

    use super::*;

    type Boxed = Pin<Box<dyn futures_util::Stream<Item = u64> + Send>>;

    /// `n` streams fed by hand, in one [`Share`].
    fn channels(n: usize) -> (Vec<tokio::sync::mpsc::UnboundedSender<u64>>, Share<Boxed>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..n).map(|_| tokio::sync::mpsc::unbounded_channel()).unzip();
        let streams = receivers.into_iter().map(tokio_stream_of).collect();
        (senders, Share::new(streams))
    }

    fn tokio_stream_of(mut receiver: tokio::sync::mpsc::UnboundedReceiver<u64>) -> Boxed {
        Box::pin(futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx)))
    }

    // Shows: a task reading several streams gets every message of each, including messages
    // that arrive after it went to sleep on them (their stream's waker wakes it), and ends
    // once every stream has ended; one stream alone is read the same way.
    #[tokio::test]
    async fn a_share_reads_every_stream_until_all_end() {
        for n in [1, 5] {
            let (senders, mut share) = channels(n);
            let (got, done) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicU64::new(0)));
            let (task_got, task_done) = (got.clone(), done.clone());
            let reader = tokio::spawn(async move {
                std::future::poll_fn(|cx| {
                    share.poll(cx, |m| task_got.lock().unwrap_or_else(|p| p.into_inner()).push(m))
                })
                .await;
                task_done.store(1, Ordering::SeqCst);
            });
            for round in 0..3u64 {
                for (i, sender) in senders.iter().enumerate() {
                    sender.send(round * 10 + i as u64).expect("reader alive");
                }
                // The reader has drained everything and sleeps before the next round.
                tokio::time::sleep(Duration::from_millis(20)).await;
                assert_eq!(
                    got.lock().unwrap_or_else(|p| p.into_inner()).len(),
                    (round as usize + 1) * n
                );
            }
            let mut senders = senders;
            let last = senders.pop().expect("at least one");
            drop(senders);
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(done.load(Ordering::SeqCst), 0, "ended while a stream was open");
            drop(last);
            tokio::time::timeout(Duration::from_secs(5), reader)
                .await
                .expect("ends")
                .expect("no panic");
            let mut got = got.lock().unwrap_or_else(|p| p.into_inner()).clone();
            got.sort_unstable();
            let mut want: Vec<u64> =
                (0..3u64).flat_map(|r| (0..n as u64).map(move |i| r * 10 + i)).collect();
            want.sort_unstable();
            assert_eq!(got, want);
        }
    }
}
