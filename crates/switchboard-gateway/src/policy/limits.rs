//! Client limits: the per-connection command rate (which control frames draw
//! on too), the per-node connection cap, the per-IP rate of new connections
//! and the per-IP number of connections still in their HTTP phase. Every
//! limit that bites is counted in `switchboard_limit_rejections_total{limit}`.
//!
//! Buckets take the time as an argument (the tokio clock, so paused-time
//! tests work) and never allocate.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::Limits;

/// A token bucket: holds up to `capacity` tokens, refilled at `rate` per second.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: f64, capacity: f64, now: Instant) -> Self {
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether the bucket is back to full: it then behaves as a new one.
    fn is_full(&self, now: Instant) -> bool {
        self.tokens + self.elapsed(now) * self.rate >= self.capacity
    }

    fn refill(&mut self, now: Instant) {
        self.tokens = (self.tokens + self.elapsed(now) * self.rate).min(self.capacity);
        self.last = self.last.max(now);
    }

    fn elapsed(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.last).as_secs_f64()
    }
}

/// What to do with one client command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Execute it.
    Admit,
    /// Answer `rate_limited` and do not execute it.
    Reject,
    /// Answer `rate_limited` and close the connection with 4029.
    Disconnect,
}

/// A connection's command rate limit: `client_rate` per second with bursts
/// of `client_burst`; rejected commands drain a second bucket of the same rate
/// and size, and once that is empty the connection is closed.
#[derive(Clone, Debug)]
pub(crate) struct CommandLimiter {
    admitted: TokenBucket,
    rejected: TokenBucket,
}

impl CommandLimiter {
    /// Both buckets full.
    pub(crate) fn new(limits: &Limits, now: Instant) -> Self {
        let bucket = TokenBucket::new(limits.client_rate, f64::from(limits.client_burst), now);
        CommandLimiter {
            admitted: bucket.clone(),
            rejected: bucket,
        }
    }

    /// Accounts one command.
    pub(crate) fn check(&mut self, now: Instant) -> Verdict {
        if self.admitted.try_take(now) {
            Verdict::Admit
        } else if self.rejected.try_take(now) {
            Verdict::Reject
        } else {
            Verdict::Disconnect
        }
    }
}

/// Who may open a WebSocket: the node's connection cap, the per-IP rate, and
/// the per-IP number of connections not yet upgraded.
pub(crate) struct ConnectionGate {
    slots: Arc<Semaphore>,
    max: usize,
    per_ip: IpLimiter,
    pending: IpPending,
    /// `switchboard_limit_rejections_total` by limit.
    pub(crate) rejections: Rejections,
}

/// One counted connection (open, or being upgraded); the slot is given back
/// when this is dropped.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
}

/// Handles of `switchboard_limit_rejections_total`, one per `limit` label.
pub(crate) struct Rejections {
    pub(crate) message_size: Counter,
    pub(crate) message_rate: Counter,
    pub(crate) subscriptions: Counter,
    pub(crate) connections: Counter,
    pub(crate) ip_connect_rate: Counter,
    pub(crate) channel_length: Counter,
    /// Pings and pongs over the command rate.
    pub(crate) control_rate: Counter,
    /// Connections refused because their address has too many in the HTTP phase.
    pub(crate) pending_per_ip: Counter,
    /// Pusher client events over the per-connection rate.
    pub(crate) client_events: Counter,
}

impl ConnectionGate {
    /// A gate for these limits (install the metrics recorder first).
    pub(crate) fn new(limits: &Limits) -> Self {
        let max = limits.max_connections.min(Semaphore::MAX_PERMITS);
        ConnectionGate {
            slots: Arc::new(Semaphore::new(max)),
            max,
            per_ip: IpLimiter::new(limits.ip_connect_rate),
            pending: IpPending::new(limits.max_pending_per_ip),
            rejections: Rejections::new(),
        }
    }

    /// Takes a connection slot, or `None` (counted) when the node is full.
    pub(crate) fn try_slot(&self) -> Option<ConnectionSlot> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(ConnectionSlot { _permit: permit }),
            Err(_) => {
                self.rejections.connections.increment(1);
                None
            }
        }
    }

    /// Whether every slot is taken.
    pub(crate) fn at_limit(&self) -> bool {
        self.slots.available_permits() == 0
    }

    /// The connection cap.
    pub(crate) fn max_connections(&self) -> usize {
        self.max
    }

    /// Accounts a new connection from `ip`; false (counted) when it is over the rate.
    pub(crate) fn admit_ip(&self, ip: IpAddr, now: Instant) -> bool {
        let admitted = self.per_ip.admit(ip, now);
        if !admitted {
            self.rejections.ip_connect_rate.increment(1);
        }
        admitted
    }

    /// Counts a new connection from `ip` on the public listener while it is
    /// in its HTTP phase (request head, upgrade): `None` (counted) when the
    /// address already has `max_pending_per_ip` there.
    pub(crate) fn enter_pending(&self, ip: IpAddr) -> Option<PendingGuard> {
        let guard = self.pending.enter(ip);
        if guard.is_none() {
            self.rejections.pending_per_ip.increment(1);
        }
        guard
    }

    /// The per-address cap on connections in their HTTP phase.
    pub(crate) fn max_pending_per_ip(&self) -> usize {
        self.pending.max
    }
}

impl Rejections {
    fn new() -> Self {
        let counter = |limit: &'static str| {
            let c = metrics::counter!("switchboard_limit_rejections_total", "limit" => limit);
            // Registered at zero, so alerts see a zero rather than nothing.
            c.increment(0);
            c
        };
        Rejections {
            message_size: counter("message_size"),
            message_rate: counter("message_rate"),
            subscriptions: counter("subscriptions"),
            connections: counter("connections"),
            ip_connect_rate: counter("ip_connect_rate"),
            channel_length: counter("channel_length"),
            control_rate: counter("control_rate"),
            pending_per_ip: counter("pending_per_ip"),
            client_events: counter("client_events"),
        }
    }
}

/// Most client addresses tracked at once. Beyond it (only reachable when that
/// many addresses each connect faster than the refill), new addresses are let
/// through untracked rather than refused: the connection cap still holds.
const MAX_TRACKED_IPS: usize = 65_536;
/// How often idle addresses are dropped from the map.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// New connections per second per client address, burst twice the rate.
/// IPv6 clients are keyed by their /64 (one host or site usually has a whole
/// /64, so per-address limits would not hold), IPv4-mapped IPv6 addresses as IPv4.
pub(crate) struct IpLimiter {
    rate: f64,
    burst: f64,
    map: Mutex<IpMap>,
}

struct IpMap {
    buckets: HashMap<IpAddr, TokenBucket>,
    next_sweep: Option<Instant>,
}

impl IpLimiter {
    pub(crate) fn new(rate: f64) -> Self {
        IpLimiter {
            rate,
            burst: (2.0 * rate).max(1.0),
            map: Mutex::new(IpMap {
                buckets: HashMap::new(),
                next_sweep: None,
            }),
        }
    }

    /// Takes a token for `ip`; false when its bucket is empty.
    pub(crate) fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let key = ip_key(ip);
        let mut map = crate::lock(&self.map);
        let due = map.next_sweep.is_none_or(|at| now >= at);
        if due {
            // An entry whose bucket has refilled is the same as no entry.
            map.buckets.retain(|_, b| !b.is_full(now));
            map.next_sweep = Some(now + SWEEP_INTERVAL);
        }
        if let Some(bucket) = map.buckets.get_mut(&key) {
            return bucket.try_take(now);
        }
        if map.buckets.len() >= MAX_TRACKED_IPS {
            return true;
        }
        let mut bucket = TokenBucket::new(self.rate, self.burst, now);
        let admitted = bucket.try_take(now);
        map.buckets.insert(key, bucket);
        admitted
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        crate::lock(&self.map).buckets.len()
    }
}

/// Connections per client address (keyed as [`IpLimiter`] keys them) that
/// have not finished their HTTP phase: a request head still arriving, or an
/// upgrade not yet done. The map holds only addresses with such connections,
/// so it is bounded by the open sockets.
pub(crate) struct IpPending {
    max: usize,
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection counted by [`IpPending`]; uncounted on drop.
#[derive(Debug)]
pub(crate) struct PendingGuard {
    map: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl IpPending {
    pub(crate) fn new(max: usize) -> Self {
        IpPending {
            max,
            map: Arc::default(),
        }
    }

    /// Counts a connection from `ip`, unless it has `max` already.
    pub(crate) fn enter(&self, ip: IpAddr) -> Option<PendingGuard> {
        let key = ip_key(ip);
        let mut map = crate::lock(&self.map);
        if map.get(&key).copied().unwrap_or(0) >= self.max {
            return None;
        }
        *map.entry(key).or_insert(0) += 1;
        Some(PendingGuard {
            map: self.map.clone(),
            key,
        })
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        crate::lock(&self.map).len()
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut map = crate::lock(&self.map);
        if let Some(count) = map.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The key an address is limited under.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn limits(rate: f64, burst: u32) -> Limits {
        Limits {
            client_rate: rate,
            client_burst: burst,
            ..defaults()
        }
    }

    /// Limits as a test builds them (the node's defaults live in the binary's
    /// settings table).
    fn defaults() -> Limits {
        Limits {
            max_connections: 10_000,
            max_subscriptions: 128,
            client_rate: 100.0,
            client_burst: 200,
            ip_connect_rate: 50.0,
            max_channel_length: 255,
            max_pending_per_ip: 1024,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5.0, t0);
        assert_eq!((0..10).filter(|_| b.try_take(t0)).count(), 5);
        assert!(!b.try_take(t0 + ms(99)), "a token takes 100 ms");
        assert!(b.try_take(t0 + ms(100)));
        assert!(!b.try_take(t0 + ms(100)));
        // Never more than the capacity, however long it rests.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.try_take(later)).count(), 5);
    }

    #[test]
    fn bucket_tolerates_time_going_backwards() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut b = TokenBucket::new(1.0, 1.0, t0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 - ms(500)));
        assert!(b.try_take(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn commands_are_rejected_then_the_connection_is_closed() {
        let t0 = Instant::now();
        let mut l = CommandLimiter::new(&limits(100.0, 200), t0);
        let verdicts: Vec<_> = (0..401).map(|_| l.check(t0)).collect();
        assert!(verdicts[..200].iter().all(|v| *v == Verdict::Admit));
        assert!(verdicts[200..400].iter().all(|v| *v == Verdict::Reject));
        assert_eq!(verdicts[400], Verdict::Disconnect);
    }

    #[test]
    fn sending_at_the_rate_is_never_rejected() {
        let t0 = Instant::now();
        let mut l = CommandLimiter::new(&limits(100.0, 200), t0);
        for i in 0..10_000 {
            assert_eq!(l.check(t0 + ms(10 * i)), Verdict::Admit, "command {i}");
        }
    }

    #[test]
    fn moderate_excess_is_rejected_without_disconnecting() {
        // 150/s against a limit of 100/s: 50/s rejected, refilled at 100/s.
        let t0 = Instant::now();
        let mut l = CommandLimiter::new(&limits(100.0, 200), t0);
        let mut rejected = 0;
        for i in 0..15_000u64 {
            let at = t0 + Duration::from_micros(i * 1_000_000 / 150);
            match l.check(at) {
                Verdict::Admit => {}
                Verdict::Reject => rejected += 1,
                Verdict::Disconnect => panic!("disconnected at command {i}"),
            }
        }
        assert!(rejected > 4000, "{rejected}");
    }

    #[test]
    fn the_rejection_bucket_refills() {
        let t0 = Instant::now();
        let mut l = CommandLimiter::new(&limits(10.0, 2), t0);
        assert_eq!(l.check(t0), Verdict::Admit);
        assert_eq!(l.check(t0), Verdict::Admit);
        assert_eq!(l.check(t0), Verdict::Reject);
        assert_eq!(l.check(t0), Verdict::Reject);
        let t1 = t0 + ms(200);
        assert_eq!(l.check(t1), Verdict::Admit);
        assert_eq!(l.check(t1), Verdict::Admit);
        assert_eq!(l.check(t1), Verdict::Reject);
        assert_eq!(l.check(t1), Verdict::Reject);
        assert_eq!(l.check(t1), Verdict::Disconnect);
    }

    #[test]
    fn ip_rate_has_a_burst_of_twice_the_rate() {
        let t0 = Instant::now();
        let l = IpLimiter::new(5.0);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!((0..20).filter(|_| l.admit(a, t0)).count(), 10);
        assert!(l.admit(b, t0), "other addresses have their own bucket");
        assert!(!l.admit(a, t0 + ms(199)));
        assert!(l.admit(a, t0 + ms(200)));
    }

    #[test]
    fn ip_keys() {
        let v6 = |s: &str| s.parse::<IpAddr>().expect("address");
        assert_eq!(ip_key(v6("2001:db8:1:2:aaaa::1")), v6("2001:db8:1:2::"));
        assert_eq!(
            ip_key(v6("2001:db8:1:2:aaaa::1")),
            ip_key(v6("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(ip_key(v6("2001:db8:1:2::1")), ip_key(v6("2001:db8:1:3::1")));
        assert_eq!(ip_key(v6("::ffff:192.0.2.7")), v6("192.0.2.7"));
        assert_eq!(ip_key(v6("192.0.2.7")), v6("192.0.2.7"));
    }

    #[test]
    fn idle_addresses_are_forgotten_and_the_map_is_bounded() {
        let t0 = Instant::now();
        let l = IpLimiter::new(1000.0);
        let ip = |n: u32| IpAddr::V4(Ipv4Addr::from(n));
        for n in 0..1000 {
            assert!(l.admit(ip(n), t0));
        }
        assert_eq!(l.tracked(), 1000);
        // After the sweep interval every bucket has refilled: all dropped.
        assert!(l.admit(ip(5000), t0 + SWEEP_INTERVAL));
        assert_eq!(l.tracked(), 1);

        // Fill to the cap with addresses that stay busy.
        let slow = IpLimiter::new(0.001);
        for n in 0..MAX_TRACKED_IPS as u32 {
            slow.admit(ip(n), t0);
        }
        assert_eq!(slow.tracked(), MAX_TRACKED_IPS);
        assert!(slow.admit(ip(u32::MAX), t0), "untracked beyond the cap");
        assert_eq!(slow.tracked(), MAX_TRACKED_IPS);
        assert!(!slow.admit(ip(1), t0), "tracked ones stay limited");
        assert!(!slow.admit(ip(1), t0));
    }

    #[test]
    fn pending_connections_are_capped_per_address_and_given_back() {
        let p = IpPending::new(2);
        let a = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        let b = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let first = p.enter(a).expect("first");
        let _second = p.enter(a).expect("second");
        assert!(p.enter(a).is_none(), "a third from one address");
        let _other = p.enter(b).expect("other addresses count apart");
        drop(first);
        let _third = p.enter(a).expect("a freed place");
        assert!(p.enter(a).is_none());
        drop((_second, _third, _other));
        assert_eq!(p.tracked(), 0, "no entry outlives its connections");
        let refused = IpPending::new(0);
        assert!(refused.enter(a).is_none());
        assert_eq!(refused.tracked(), 0, "a refusal leaves no entry");
    }

    #[test]
    fn connection_slots_are_given_back() {
        let gate = ConnectionGate::new(&Limits {
            max_connections: 2,
            ..defaults()
        });
        let a = gate.try_slot().expect("first");
        let b = gate.try_slot().expect("second");
        assert!(gate.at_limit());
        assert!(gate.try_slot().is_none());
        drop(a);
        assert!(!gate.at_limit());
        let _c = gate.try_slot().expect("freed slot");
        drop(b);
        assert_eq!(gate.max_connections(), 2);
    }
}
