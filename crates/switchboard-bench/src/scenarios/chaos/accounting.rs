//! The accounting of a chaos run: for every subscriber and every acknowledged message of its
//! channel, delivered, repaired, signalled or lost (see the rules in [`super`]).

use std::collections::HashMap;

use super::subscriber::SubLog;
use super::traffic::{PubLog, Sent, key};

/// A lost message, for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost {
    /// Its [`key`].
    pub key: u64,
    /// Its publish.
    pub sent: Sent,
    /// The subscriber that did not get it.
    pub subscriber: usize,
    /// The node that subscriber was on when the publish started (`None`: not connected).
    pub node: Option<usize>,
}

/// The accounting of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounting {
    /// Acknowledged publishes.
    pub acknowledged: u64,
    /// (subscriber, acknowledged message) pairs that were counted.
    pub expected: u64,
    /// Received live.
    pub delivered: u64,
    /// Received in a recovery's replay.
    pub repaired: u64,
    /// Not received, but signalled.
    pub signalled: u64,
    /// Not received, not signalled.
    pub lost: u64,
    /// Messages received twice by one subscriber.
    pub duplicates: u64,
    /// Received after a message published after it was acknowledged, plus history offsets
    /// that went back or skipped ahead without a signal.
    pub order_violations: u64,
    /// Received messages that were never acknowledged (failed or unanswered publishes that
    /// went through anyway): neither counted nor errors.
    pub unacknowledged_received: u64,
    /// Received messages no publisher sent (a bug in the node or the generator).
    pub unknown_received: u64,
    /// The first few lost messages.
    pub lost_examples: Vec<Lost>,
}

/// Counts one run: see the module documentation. `channels` is the number of channels.
pub fn account(pubs: &[PubLog], subs: &[SubLog], channels: usize, examples: usize) -> Accounting {
    let mut a = Accounting::default();
    let mut index: HashMap<u64, Sent> = HashMap::new();
    let mut acked: Vec<Vec<(u64, Sent)>> = vec![Vec::new(); channels];
    for p in pubs {
        for (i, s) in p.sent.iter().enumerate() {
            let k = key(p.id, i as u64 + 1);
            index.insert(k, *s);
            if s.ack_us.is_some() {
                a.acknowledged += 1;
                if let Some(list) = acked.get_mut(usize::from(s.channel)) {
                    list.push((k, *s));
                }
            }
        }
    }
    for sub in subs {
        a.duplicates += sub.duplicates;
        a.order_violations += sub.gaps + sub.backwards;
        let Some(first) = sub.first_sub_us else {
            continue;
        };
        // What it received: how, and (start of publish, time received) to find, for any
        // message, the first one received that was published after it was acknowledged.
        let mut got: HashMap<u64, bool> = HashMap::with_capacity(sub.received.len());
        let mut later: Vec<(u64, u64)> = Vec::with_capacity(sub.received.len());
        let mut max_start = 0u64;
        for r in &sub.received {
            got.insert(r.key, r.repaired);
            let Some(s) = index.get(&r.key) else {
                a.unknown_received += 1;
                continue;
            };
            match s.ack_us {
                Some(ack) if max_start > ack => a.order_violations += 1,
                Some(_) => {}
                None => a.unacknowledged_received += 1,
            }
            max_start = max_start.max(s.start_us);
            later.push((s.start_us, r.at_us));
        }
        later.sort_unstable();
        // suffix[i]: the earliest receipt among later[i..].
        let mut suffix = vec![u64::MAX; later.len() + 1];
        for i in (0..later.len()).rev() {
            suffix[i] = suffix[i + 1].min(later[i].1);
        }
        for &(k, s) in acked.get(sub.channel).map_or(&[][..], Vec::as_slice) {
            if s.start_us < first {
                continue;
            }
            a.expected += 1;
            match got.get(&k) {
                Some(false) => a.delivered += 1,
                Some(true) => a.repaired += 1,
                None => {
                    let ack = s.ack_us.unwrap_or(s.start_us);
                    let next = suffix[later.partition_point(|&(start, _)| start <= ack)];
                    let covered = sub
                        .signals
                        .iter()
                        .any(|g| g.from_us <= next && g.to_us >= s.start_us);
                    if covered {
                        a.signalled += 1;
                    } else {
                        a.lost += 1;
                        if a.lost_examples.len() < examples {
                            let node = sub
                                .connections
                                .iter()
                                .find(|c| c.0 <= s.start_us && s.start_us < c.1)
                                .map(|c| c.2);
                            a.lost_examples.push(Lost {
                                key: k,
                                sent: s,
                                subscriber: sub.index,
                                node,
                            });
                        }
                    }
                }
            }
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::scenarios::chaos::subscriber::{Recv, Signal, SignalKind};
    use crate::scenarios::chaos::traffic::unkey;

    fn sent(channel: u16, start_us: u64, ack_us: Option<u64>) -> Sent {
        Sent {
            channel,
            node: 0,
            client: false,
            start_us,
            ack_us,
            offset: None,
        }
    }

    fn recv(publisher: u32, seq: u64, at_us: u64) -> Recv {
        Recv {
            key: key(publisher, seq),
            at_us,
            repaired: false,
        }
    }

    fn sub(received: Vec<Recv>, signals: Vec<Signal>) -> SubLog {
        SubLog {
            first_sub_us: Some(100),
            connections: vec![(100, u64::MAX, 0)],
            received,
            signals,
            ..SubLog::default()
        }
    }

    /// Publisher 0: seq 1..=4 on channel 0 at 1000, 2000, 3000, 4000 µs, each acknowledged
    /// 100 µs later; seq 5 before the subscriber subscribed; seq 6 never acknowledged.
    fn pubs() -> Vec<PubLog> {
        let mut sent_list: Vec<Sent> = (1..=4)
            .map(|i| sent(0, i * 1000, Some(i * 1000 + 100)))
            .collect();
        sent_list.push(sent(0, 50, Some(60)));
        sent_list.push(sent(0, 5000, None));
        vec![PubLog {
            id: 0,
            sent: sent_list,
            errors: BTreeMap::new(),
        }]
    }

    #[test]
    fn keys_round_trip() {
        assert_eq!(unkey(key(9_999, 123_456)), (9_999, 123_456));
        assert_ne!(key(1, 2), key(2, 1));
    }

    #[test]
    fn all_delivered_is_clean() {
        let s = sub(
            (1..=4).map(|i| recv(0, i, i * 1000 + 200)).collect(),
            vec![],
        );
        let a = account(&pubs(), &[s], 1, 5);
        assert_eq!(a.acknowledged, 5);
        // Seq 5 was published before the first subscribed reply: not counted.
        assert_eq!((a.expected, a.delivered, a.lost), (4, 4, 0));
        assert_eq!(a.order_violations, 0);
    }

    #[test]
    fn a_missing_message_without_a_signal_is_lost() {
        let s = sub(
            [1, 3, 4]
                .iter()
                .map(|&i| recv(0, i, i * 1000 + 200))
                .collect(),
            vec![],
        );
        let a = account(&pubs(), &[s], 1, 5);
        assert_eq!((a.delivered, a.lost, a.signalled), (3, 1, 0));
        assert_eq!(a.lost_examples[0].key, key(0, 2));
        assert_eq!(a.lost_examples[0].node, Some(0));
    }

    #[test]
    fn a_signal_between_publish_and_the_next_receipt_covers_it() {
        let received: Vec<Recv> = [1, 3, 4]
            .iter()
            .map(|&i| recv(0, i, i * 1000 + 200))
            .collect();
        let point = |at| Signal {
            kind: SignalKind::Missed,
            from_us: at,
            to_us: at,
        };
        // Between seq 2's publish (2000) and the receipt of seq 3 (3200): signalled.
        let a = account(&pubs(), &[sub(received.clone(), vec![point(2500)])], 1, 5);
        assert_eq!((a.signalled, a.lost), (1, 0));
        // Before seq 2 was published: does not cover it.
        let a = account(&pubs(), &[sub(received.clone(), vec![point(1500)])], 1, 5);
        assert_eq!((a.signalled, a.lost), (0, 1));
        // After the next message arrived: the client already went on as if nothing was
        // missing.
        let a = account(&pubs(), &[sub(received.clone(), vec![point(3300)])], 1, 5);
        assert_eq!((a.signalled, a.lost), (0, 1));
        // A disconnection that began before the publish and ended after it covers it.
        let gap = Signal {
            kind: SignalKind::Disconnected,
            from_us: 1500,
            to_us: 2050,
        };
        let a = account(&pubs(), &[sub(received, vec![gap])], 1, 5);
        assert_eq!((a.signalled, a.lost), (1, 0));
    }

    #[test]
    fn the_last_message_missing_is_lost_unless_signalled_before_the_end() {
        let received: Vec<Recv> = (1..=3).map(|i| recv(0, i, i * 1000 + 200)).collect();
        let a = account(&pubs(), &[sub(received.clone(), vec![])], 1, 5);
        assert_eq!(a.lost, 1);
        let late = Signal {
            kind: SignalKind::NotRecovered,
            from_us: 9_000,
            to_us: 9_000,
        };
        let a = account(&pubs(), &[sub(received, vec![late])], 1, 5);
        assert_eq!((a.signalled, a.lost), (1, 0));
    }

    #[test]
    fn repaired_duplicates_order_and_unacknowledged() {
        let mut received = vec![
            recv(0, 1, 1200),
            recv(0, 3, 3200),
            // Seq 2 after seq 3, which was published after seq 2 was acknowledged.
            recv(0, 2, 3300),
        ];
        received.push(Recv {
            repaired: true,
            ..recv(0, 4, 4200)
        });
        received.push(recv(0, 6, 5200));
        received.push(recv(7, 1, 6100));
        let mut s = sub(received, vec![]);
        s.duplicates = 2;
        s.gaps = 1;
        let a = account(&pubs(), &[s], 1, 5);
        assert_eq!((a.delivered, a.repaired, a.lost), (3, 1, 0));
        assert_eq!(a.duplicates, 2);
        assert_eq!(a.order_violations, 2);
        assert_eq!((a.unacknowledged_received, a.unknown_received), (1, 1));
    }

    #[test]
    fn subscribers_that_never_subscribed_count_nothing() {
        let mut s = sub(vec![], vec![]);
        s.first_sub_us = None;
        let a = account(&pubs(), &[s], 1, 5);
        assert_eq!((a.expected, a.lost), (0, 0));
    }
}
