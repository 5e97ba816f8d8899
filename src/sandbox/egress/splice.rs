//! Copying a tunnel's bytes between two TCP sockets inside the kernel: each direction
//! moves data socket → pipe → socket with splice(2), so it never passes through a user
//! buffer.
//!
//! Each direction has two small threads, one filling its pipe from the source socket and
//! one draining it into the destination, so reading and writing overlap; they sleep in
//! the kernel (on the pipe, or in poll(2) on a socket) instead of going through the async
//! runtime's readiness for every chunk. The threads come from a pool that keeps idle ones
//! for a while, so a new tunnel does not wait for threads to be made. examples/egress_bench.rs, 1 GiB on loopback,
//! against a direct download: 64 KiB user buffers got 0.39, splicing on the async runtime
//! 0.45, these threads more (figures in docs/sandbox.md).
//!
//! The threads share the sockets, so a descriptor is closed only once every thread using
//! it is done; when the caller's future ends or is dropped (the phase is over), both
//! sockets are shut down, which wakes and ends every thread.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::record::Counters;

/// The most one splice call moves, and the pipe size asked for.
const CHUNK: usize = 1 << 20;

/// Stack for a splice thread: it only makes system calls.
const THREAD_STACK: usize = 64 * 1024;

/// Splices both directions until each has ended (end of file, then a write shutdown of
/// the other side), or either fails. Bytes from `client` to `upstream` are counted up.
pub async fn bidirectional(client: TcpStream, upstream: TcpStream, counters: &Arc<Counters>) -> io::Result<()> {
    let client: Arc<OwnedFd> = Arc::new(client.into_std()?.into());
    let upstream: Arc<OwnedFd> = Arc::new(upstream.into_std()?.into());
    let _cut = CutOnDrop([client.clone(), upstream.clone()]);
    let (done, mut finished) = mpsc::unbounded_channel();
    let up = counters.clone();
    direction(client.clone(), upstream.clone(), move |n| up.add_up(n), done.clone())?;
    let down = counters.clone();
    direction(upstream, client, move |n| down.add_down(n), done)?;
    for _ in 0..2 {
        match finished.recv().await {
            Some(Ok(())) => {}
            Some(Err(error)) => return Err(error),
            None => return Err(io::Error::other("a splice thread ended without a word")),
        }
    }
    Ok(())
}

/// Starts the filling and the draining thread of one direction; the draining one reports
/// on `done` once everything read was written and `to` was shut for writing, or on error.
fn direction(
    from: Arc<OwnedFd>,
    to: Arc<OwnedFd>,
    count: impl Fn(usize) + Send + 'static,
    done: mpsc::UnboundedSender<io::Result<()>>,
) -> io::Result<()> {
    let (read_end, write_end) = pipe()?;
    spawn(move || {
        // An error here ends the pipe early; the draining side then stops too, and
        // the caller's cut wakes the other direction.
        let _ = fill(&from, &write_end);
    })?;
    spawn(move || {
        let _ = done.send(drain(&read_end, &to, count));
    })
}

/// Runs `work` on an idle splice thread, or on a new one when none is idle. Threads are
/// kept for [`IDLE_FOR`] after their work ends, so a new tunnel's first bytes do not wait
/// for a thread to be made (on a loaded machine that took milliseconds). There is no cap:
/// each tunnel needs its four threads at once, and tunnels are capped per phase.
fn spawn(work: impl FnOnce() + Send + 'static) -> io::Result<()> {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(Pool::default).run(Box::new(work))
}

/// How long a splice thread waits for more work before it ends.
const IDLE_FOR: Duration = Duration::from_secs(30);

type Work = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Pool {
    state: Mutex<PoolState>,
    more: Condvar,
}

#[derive(Default)]
struct PoolState {
    queued: VecDeque<Work>,
    /// Threads waiting for work; each queued item has one of them promised to it.
    idle: usize,
}

impl Pool {
    fn run(&'static self, work: Work) -> io::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.idle > state.queued.len() {
            state.queued.push_back(work);
            self.more.notify_one();
            return Ok(());
        }
        drop(state);
        let thread = std::thread::Builder::new().name("egress-splice".into()).stack_size(THREAD_STACK);
        thread.spawn(move || self.serve(work)).map(drop)
    }

    fn serve(&self, first: Work) {
        first();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.idle += 1;
        loop {
            if let Some(work) = state.queued.pop_front() {
                state.idle -= 1;
                drop(state);
                work();
                state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.idle += 1;
                continue;
            }
            let (next, waited) = self.more.wait_timeout(state, IDLE_FOR).unwrap_or_else(PoisonError::into_inner);
            state = next;
            if waited.timed_out() && state.queued.is_empty() {
                state.idle -= 1;
                return;
            }
        }
    }
}

/// Socket → pipe until the socket's end of file; dropping `pipe` then tells the drain.
fn fill(socket: &OwnedFd, pipe: &OwnedFd) -> io::Result<()> {
    loop {
        // A full pipe blocks in the kernel, so EAGAIN means the socket has nothing.
        match splice(socket.as_raw_fd(), pipe.as_raw_fd(), CHUNK) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(socket.as_fd(), PollFlags::POLLIN)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Pipe → socket until the pipe is empty and its writer gone, then shuts `socket` for
/// writing so the peer sees the end too.
fn drain(pipe: &OwnedFd, socket: &OwnedFd, count: impl Fn(usize)) -> io::Result<()> {
    loop {
        // An empty pipe blocks in the kernel, so EAGAIN means the socket is full.
        match splice(pipe.as_raw_fd(), socket.as_raw_fd(), CHUNK) {
            Ok(0) => return shutdown(socket.as_fd(), libc::SHUT_WR),
            Ok(n) => count(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => wait(socket.as_fd(), PollFlags::POLLOUT)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Sleeps until `socket` is ready for `events`, or hung up (the next splice then says how).
fn wait(socket: BorrowedFd<'_>, events: PollFlags) -> io::Result<()> {
    let mut fds = [PollFd::new(socket, events)];
    match poll(&mut fds, PollTimeout::NONE) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both descriptors are owned by the calling thread for the duration of the
    // call; null offsets are allowed for pipes and sockets.
    let n = unsafe { libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, libc::SPLICE_F_MOVE) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// A blocking pipe, as large as the system lets an unprivileged process make it.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // Failing leaves the default size, which only costs speed.
    let _ = nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as libc::c_int));
    Ok((read_end, write_end))
}

fn shutdown(socket: BorrowedFd<'_>, how: libc::c_int) -> io::Result<()> {
    // SAFETY: shutdown(2) on a socket the caller holds open.
    if unsafe { libc::shutdown(socket.as_raw_fd(), how) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    // The peer may already be gone; nothing is left to send either way.
    if error.raw_os_error() == Some(libc::ENOTCONN) { Ok(()) } else { Err(error) }
}

/// Shuts both sockets down when the tunnel's future ends or is dropped, which wakes
/// every splice thread still sleeping on them.
struct CutOnDrop([Arc<OwnedFd>; 2]);

impl Drop for CutOnDrop {
    fn drop(&mut self) {
        for socket in &self.0 {
            let _ = shutdown(socket.as_fd(), libc::SHUT_RDWR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn both_directions_arrive_whole_and_ends_pass_through() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_upstream, mut upstream) = pair().await;
        let counters = Arc::new(Counters::default());
        let spliced = {
            let counters = counters.clone();
            tokio::spawn(async move { bidirectional(proxy_client, proxy_upstream, &counters).await })
        };
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = up.iter().rev().copied().collect();
        let (sent_up, sent_down) = (up.clone(), down.clone());
        let upstream_side = tokio::spawn(async move {
            let mut got = Vec::new();
            let (mut read, mut write) = upstream.split();
            let (read_all, write_all) = tokio::join!(read.read_to_end(&mut got), async {
                write.write_all(&sent_down).await?;
                write.shutdown().await
            });
            read_all.unwrap();
            write_all.unwrap();
            got
        });
        let (mut read, mut write) = client.split();
        let mut got = Vec::new();
        let (read_all, write_all) = tokio::join!(read.read_to_end(&mut got), async {
            write.write_all(&sent_up).await?;
            write.shutdown().await
        });
        read_all.unwrap();
        write_all.unwrap();
        assert!(got == down, "down arrived whole");
        assert!(upstream_side.await.unwrap() == up, "up arrived whole");
        spliced.await.unwrap().unwrap();
        assert_eq!(counters.up.load(Ordering::Relaxed), up.len() as u64);
        assert_eq!(counters.down.load(Ordering::Relaxed), down.len() as u64);
    }

    #[tokio::test]
    async fn dropping_the_tunnel_cuts_both_sides_while_they_are_idle() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_upstream, mut upstream) = pair().await;
        let counters = Arc::new(Counters::default());
        let spliced = tokio::spawn(async move { bidirectional(proxy_client, proxy_upstream, &counters).await });
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        upstream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        spliced.abort(); // the phase ended: neither side has said it is done
        let bounded = std::time::Duration::from_secs(30);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(bounded, client.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0))), "the client sees the end: {read:?}");
        let read = tokio::time::timeout(bounded, upstream.read_to_end(&mut rest)).await;
        assert!(matches!(read, Ok(Ok(0))), "the upstream sees the end: {read:?}");
    }

    #[test]
    fn an_idle_splice_thread_takes_the_next_work_instead_of_a_new_one() {
        let pool: &'static Pool = Box::leak(Box::default());
        let (sender, threads) = std::sync::mpsc::channel();
        let report = |sender: std::sync::mpsc::Sender<std::thread::ThreadId>| {
            Box::new(move || sender.send(std::thread::current().id()).unwrap()) as Work
        };
        pool.run(report(sender.clone())).unwrap();
        let first = threads.recv().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while pool.state.lock().unwrap().idle == 0 {
            assert!(std::time::Instant::now() < deadline, "the thread never became idle");
            std::thread::yield_now();
        }
        pool.run(report(sender)).unwrap();
        assert_eq!(threads.recv().unwrap(), first, "the idle thread ran it");
        assert_eq!(pool.state.lock().unwrap().queued.len(), 0);
    }
}
