//! Waiting on both sockets at once without losing a byte the kernel delivered.

// A split of the driver: it shares the driver's imports and private items.
use super::*;

/// Which socket(s) a wait reads; see `Relay::wait_for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WaitFor {
    Client,
    Server,
    Both,
}

pub(super) fn cancelled(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED)
}

/// Reads both sockets at once, up to the given number of bytes from each; when one delivers (or `wait` passes) the other read is
/// cancelled and awaited, so no byte the kernel delivered is lost. A side whose read was
/// cancelled before any data came reports `Err(ECANCELED)`.
///
/// `read_client = false` leaves the client unread (a held session whose buffer is full), and
/// `wake`, when given, ends the wait early like the timer does (a review decided).
pub(super) async fn read_either(
    (client, cin, client_max): (&mut Transport, &mut BytesMut, usize),
    read_client: bool,
    (upstream, uin, upstream_max): (&mut Transport, &mut BytesMut, usize),
    wait: Duration,
    mut wake: Option<&mut crate::reviews::Waiter>,
) -> (Option<io::Result<usize>>, Option<io::Result<usize>>) {
    let mut canceller = Some(Canceller::new());
    let Some(handle) = canceller.as_ref().map(Canceller::handle) else {
        return (None, None);
    };
    let mut c = pin!(client.read_into_cancelable(cin, client_max, handle.clone()));
    let mut u = pin!(upstream.read_into_cancelable(uin, upstream_max, handle));
    let mut timer = pin!(monoio::time::sleep(wait));
    let mut rc = None;
    let mut ru = None;
    let mut woken = false;
    std::future::poll_fn(|cx| {
        if read_client
            && rc.is_none()
            && let Poll::Ready(r) = c.as_mut().poll(cx)
        {
            rc = Some(r);
        }
        if !woken && let Some(w) = wake.as_mut() {
            woken = std::pin::Pin::new(&mut **w).poll(cx).is_ready();
        }
        if !read_client && ru.is_some() {
            return Poll::Ready(());
        }
        if ru.is_none()
            && let Poll::Ready(r) = u.as_mut().poll(cx)
        {
            ru = Some(r);
        }
        if rc.is_some() && ru.is_some() {
            return Poll::Ready(());
        }
        if canceller.is_some()
            && (rc.is_some() || ru.is_some() || woken || timer.as_mut().poll(cx).is_ready())
            && let Some(cn) = canceller.take()
        {
            drop(cn.cancel());
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await;
    (rc, ru)
}

/// Reads one socket for up to `wait`. `None` when the timer ended the wait with nothing read
/// (the read was cancelled and awaited, so nothing the kernel delivered is lost: bytes that
/// raced the cancel come back as `Some(Ok(n))`).
pub(super) async fn read_one(
    transport: &mut Transport,
    buf: &mut BytesMut,
    max: usize,
    wait: Duration,
) -> Option<io::Result<usize>> {
    let mut canceller = Some(Canceller::new());
    let handle = canceller.as_ref().map(Canceller::handle)?;
    let mut read = pin!(transport.read_into_cancelable(buf, max, handle));
    let mut timer = pin!(monoio::time::sleep(wait));
    let r = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = read.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if canceller.is_some()
            && timer.as_mut().poll(cx).is_ready()
            && let Some(cn) = canceller.take()
        {
            drop(cn.cancel());
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    })
    .await;
    match r {
        Err(e) if cancelled(&e) => None,
        r => Some(r),
    }
}
