//! The subscriber client every scenario runs: a task that owns its socket, reads every frame
//! into a [`Session`] (the scenario's own bookkeeping: counting, timing, checking), obeys the
//! coordinator's orders, and, for the scenarios that survive faults, waits out a backoff before
//! it reconnects (see [`crate::clients::backoff::Redial`]).
//!
//! The coordinator talks to each task through a small control channel (drain, then stop)
//! rather than a shared `watch`, because polling a per-task channel takes no shared lock per
//! message. Every read loop polls the control channel first (`biased`), so a `Stop` is obeyed
//! even under a flood of messages.

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::ws::{self, Ws};

/// Orders from the coordinator to a subscriber.
#[derive(Debug, Clone)]
pub enum Control<T> {
    /// Publishing is over: `T` says what the subscriber must have received before it is done
    /// (the last seqs, the last offset, the final markers...).
    Drain(T),
    /// Stop reading, close the socket and report.
    Stop,
}

/// What a subscriber does with what arrives: a scenario's own state.
pub trait Session {
    /// What a [`Control::Drain`] carries.
    type Target;

    /// Publishing is over: `target` is what must arrive.
    fn drain(&mut self, target: Self::Target);

    /// A text frame.
    fn text(&mut self, frame: &[u8]);

    /// A binary frame: never sent on the JSON subprotocol.
    fn binary(&mut self);
}

/// How a connection's read loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Told to stop (or the coordinator is gone).
    Stop,
    /// The connection ended: why.
    Dropped(String),
}

/// Handles one order; false on `Stop` (or when the coordinator is gone).
pub fn obey<S: Session>(session: &mut S, cmd: Option<Control<S::Target>>) -> bool {
    match cmd {
        Some(Control::Drain(t)) => {
            session.drain(t);
            true
        }
        Some(Control::Stop) | None => false,
    }
}

/// Reads `ws` into `session` until told to stop or the connection ends. On `Stop` the socket
/// is closed politely (a close frame, at most a second).
pub async fn read<S: Session>(
    ws: &mut Ws,
    control: &mut mpsc::Receiver<Control<S::Target>>,
    session: &mut S,
) -> Ended {
    loop {
        tokio::select! {
            biased;
            cmd = control.recv() => if !obey(session, cmd) {
                ws::close(ws).await;
                return Ended::Stop;
            },
            item = ws.next() => match item {
                Some(Ok(Message::Text(t))) => session.text(t.as_bytes()),
                Some(Ok(Message::Binary(_))) => session.binary(),
                Some(Ok(Message::Close(frame))) => {
                    return Ended::Dropped(match frame {
                        Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
                        None => "closed by server".to_owned(),
                    });
                }
                // Pings are answered by tungstenite itself, on the next read.
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ended::Dropped(format!("read error: {e}")),
                None => return Ended::Dropped("connection ended".to_owned()),
            },
        }
    }
}

/// Waits until `wake` (a reconnect's backoff), obeying orders meanwhile; false when told to
/// stop.
pub async fn pause_until<S: Session>(
    wake: Instant,
    control: &mut mpsc::Receiver<Control<S::Target>>,
    session: &mut S,
) -> bool {
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => return true,
            cmd = control.recv() => if !obey(session, cmd) {
                return false;
            },
        }
    }
}

/// For a subscriber that ended early: obeys orders until `Stop`, so that every subscriber
/// reports at the same point.
pub async fn wait_for_stop<S: Session>(
    control: &mut mpsc::Receiver<Control<S::Target>>,
    session: &mut S,
) {
    while let Some(cmd) = control.recv().await {
        if !obey(session, Some(cmd)) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Tally {
        drained: Vec<u64>,
    }

    impl Session for Tally {
        type Target = u64;
        fn drain(&mut self, target: u64) {
            self.drained.push(target);
        }
        fn text(&mut self, _: &[u8]) {}
        fn binary(&mut self) {}
    }

    #[tokio::test]
    async fn orders_are_obeyed_until_stop() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut t = Tally::default();
        tx.send(Control::Drain(3)).await.unwrap();
        tx.send(Control::Drain(4)).await.unwrap();
        tx.send(Control::Stop).await.unwrap();
        tx.send(Control::Drain(5)).await.unwrap();
        wait_for_stop(&mut rx, &mut t).await;
        assert_eq!(t.drained, [3, 4]);
        // A pause ends early on Stop, and runs out otherwise.
        let far = Instant::now() + std::time::Duration::from_secs(60);
        tx.send(Control::Stop).await.unwrap();
        assert!(!pause_until(far, &mut rx, &mut t).await);
        assert!(pause_until(Instant::now(), &mut rx, &mut t).await);
        assert_eq!(t.drained, [3, 4, 5]);
        drop(tx);
        assert!(!obey(&mut t, rx.recv().await));
    }
}
