//! Who holds the connection slots: at most `server.max_connections_per_address`
//! from one client address, and at `server.max_connections` room made by
//! closing the connection that has waited longest without a request in
//! flight, before a new one is refused.
//!
//! The table is touched on accept and on close only, never per request: a
//! connection's idleness is read from its [`ConnState`] when room is needed.
//! Open connections sit in a list in accept order; looking for one to close
//! reads at most [`SCAN`] of them from the front, and moves the busy ones it
//! met to the back, so the next look starts with others.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::ConnState;
use crate::client_addr::TrustedProxies;

/// Connections looked at, at most, per accept at the cap (two atomic loads
/// each, far less than the TLS handshake the accept leads to). A scan of all
/// of thousands per accept would make a flood at the cap cost quadratic
/// time; 128 finds an idle one unless nearly all are busy, and the busy ones
/// met go to the back of the list, so the next looks cover the rest.
const SCAN: usize = 128;
const NIL: u32 = u32::MAX;

/// What the connections of one client are counted under: an IPv4 address,
/// or the /64 an IPv6 address lies in (one host usually holds a whole /64
/// and may pick any source address in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrKey {
    V4(Ipv4Addr),
    V6(u64),
}

impl AddrKey {
    #[must_use]
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => AddrKey::V4(v4),
            IpAddr::V6(v6) => AddrKey::V6(u64::try_from(u128::from(v6) >> 64).unwrap_or(0)),
        }
    }
}

impl std::fmt::Display for AddrKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddrKey::V4(v4) => write!(f, "{v4}"),
            AddrKey::V6(prefix) => write!(f, "{}/64", Ipv6Addr::from(u128::from(*prefix) << 64)),
        }
    }
}

/// Counts of the connection layer for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections open now.
    pub open: AtomicU64,
    /// Closed right after accept: their address had `max_connections_per_address` open.
    pub refused_address: AtomicU64,
    /// Closed right after accept: `max_connections` open, none of them closable.
    pub refused_full: AtomicU64,
    /// Closed without a request in flight to make room for a new one.
    pub closed_for_room: AtomicU64,
}

/// Why a new connection is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// This address (or /64) has the most it may.
    Address(AddrKey),
    /// Every slot is held by a connection with a request in flight.
    Full,
}

/// The connection table.
pub(super) struct Slots {
    max: usize,
    /// 0: no cap per address.
    per_address: usize,
    exempt: TrustedProxies,
    stats: Arc<ConnStats>,
    inner: Mutex<Inner>,
}

struct Inner {
    nodes: Vec<Node>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    open: usize,
    by_address: HashMap<AddrKey, usize>,
}

struct Node {
    prev: u32,
    next: u32,
    /// Bumped when the node is freed: a [`Slot`] whose connection was closed
    /// to make room finds it changed and gives nothing back twice.
    generation: u64,
    conn: Option<Arc<ConnState>>,
    key: Option<AddrKey>,
}

/// One admitted connection's place; given back when dropped.
pub(super) struct Slot {
    slots: Arc<Slots>,
    index: u32,
    generation: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.slots.lock();
        let node = &inner.nodes[self.index as usize];
        if node.generation == self.generation && node.conn.is_some() {
            self.slots.release(&mut inner, self.index);
        }
    }
}

impl Slots {
    pub(super) fn new(max: usize, per_address: usize, exempt: TrustedProxies, stats: Arc<ConnStats>) -> Self {
        Slots {
            max,
            per_address,
            exempt,
            stats,
            inner: Mutex::new(Inner {
                nodes: Vec::new(),
                free: Vec::new(),
                head: NIL,
                tail: NIL,
                open: 0,
                by_address: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a slot for a connection from `peer`, closing (telling to
    /// close) the longest-idle open connection when all are taken. Returns
    /// the slot and whether another connection was closed for it.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr, conn: &Arc<ConnState>) -> Result<(Slot, bool), Refusal> {
        let key = (self.per_address > 0 && !self.exempt.trusts(peer)).then(|| AddrKey::of(peer));
        let mut inner = self.lock();
        if let Some(key) = key
            && inner.by_address.get(&key).copied().unwrap_or(0) >= self.per_address
        {
            self.stats.refused_address.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Address(key));
        }
        let mut made_room = false;
        if inner.open >= self.max {
            let Some(victim) = self.longest_idle(&mut inner) else {
                self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Full);
            };
            if let Some(closing) = self.release(&mut inner, victim) {
                closing.evict();
            }
            self.stats.closed_for_room.fetch_add(1, Ordering::Relaxed);
            made_room = true;
        }
        let index = inner.free.pop().unwrap_or_else(|| {
            inner.nodes.push(Node { prev: NIL, next: NIL, generation: 0, conn: None, key: None });
            u32::try_from(inner.nodes.len() - 1).unwrap_or(NIL)
        });
        let node = &mut inner.nodes[index as usize];
        node.conn = Some(conn.clone());
        node.key = key;
        let generation = node.generation;
        inner.push_back(index);
        inner.open += 1;
        if let Some(key) = key {
            *inner.by_address.entry(key).or_insert(0) += 1;
        }
        self.stats.open.store(inner.open as u64, Ordering::Relaxed);
        Ok((Slot { slots: self.clone(), index, generation }, made_room))
    }

    /// The connection idle longest among the first [`SCAN`] of the list;
    /// the busy ones met move to its back.
    fn longest_idle(&self, inner: &mut Inner) -> Option<u32> {
        let mut best: Option<(Instant, u32)> = None;
        let mut busy = Vec::new();
        let mut at = inner.head;
        for _ in 0..SCAN {
            if at == NIL {
                break;
            }
            let node = &inner.nodes[at as usize];
            match node.conn.as_ref().and_then(|c| c.idle_at()) {
                Some(since) if best.is_none_or(|(b, _)| since < b) => best = Some((since, at)),
                Some(_) => {}
                None => busy.push(at),
            }
            at = node.next;
        }
        for index in busy {
            inner.unlink(index);
            inner.push_back(index);
        }
        best.map(|(_, index)| index)
    }

    /// Frees a node; returns its connection.
    fn release(&self, inner: &mut Inner, index: u32) -> Option<Arc<ConnState>> {
        inner.unlink(index);
        let node = &mut inner.nodes[index as usize];
        let conn = node.conn.take();
        let key = node.key.take();
        node.generation += 1;
        inner.free.push(index);
        inner.open -= 1;
        if let Some(key) = key
            && let Some(n) = inner.by_address.get_mut(&key)
        {
            *n -= 1;
            if *n == 0 {
                inner.by_address.remove(&key);
            }
        }
        self.stats.open.store(inner.open as u64, Ordering::Relaxed);
        conn
    }
}

impl Inner {
    fn unlink(&mut self, index: u32) {
        let (prev, next) = {
            let n = &self.nodes[index as usize];
            (n.prev, n.next)
        };
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        let n = &mut self.nodes[index as usize];
        n.prev = NIL;
        n.next = NIL;
    }

    fn push_back(&mut self, index: u32) {
        let tail = self.tail;
        {
            let n = &mut self.nodes[index as usize];
            n.prev = tail;
            n.next = NIL;
        }
        if tail == NIL {
            self.head = index;
        } else {
            self.nodes[tail as usize].next = index;
        }
        self.tail = index;
    }
}

impl ConnState {
    /// Since when the connection has had no request in flight (its accept,
    /// while its TLS handshake or first request is still to come); `None`
    /// while one is.
    fn idle_at(&self) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = self.idle_since.load(Ordering::Acquire).saturating_sub(1);
        Some(self.base + Duration::from_millis(ms))
    }

    /// Tells the connection to close: it was chosen to make room.
    fn evict(&self) {
        self.evict.notify_one();
    }

    /// Resolves once the connection was chosen to make room.
    pub(super) async fn evicted(&self) {
        self.evict.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize, per_address: usize) -> Arc<Slots> {
        let exempt = TrustedProxies::parse(&["10.9.9.9".into()]).unwrap();
        Arc::new(Slots::new(max, per_address, exempt, Arc::default()))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_count_alone_and_ipv6_by_its_64() {
        assert_eq!(AddrKey::of(ip("::ffff:192.0.2.1")), AddrKey::of(ip("192.0.2.1")));
        assert_eq!(AddrKey::of(ip("2001:db8:1:2::1")), AddrKey::of(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(AddrKey::of(ip("2001:db8:1:2::1")), AddrKey::of(ip("2001:db8:1:3::1")));
        assert_eq!(AddrKey::of(ip("2001:db8:1:2::1")).to_string(), "2001:db8:1:2::/64");
        assert_eq!(AddrKey::of(ip("192.0.2.1")).to_string(), "192.0.2.1");
    }

    #[test]
    fn one_address_gets_its_share_and_trusted_proxies_no_cap() {
        let t = table(100, 2);
        let conns: Vec<_> = (0..3).map(|_| Arc::new(ConnState::new())).collect();
        let a = t.admit(ip("192.0.2.1"), &conns[0]).unwrap();
        let _b = t.admit(ip("192.0.2.1"), &conns[1]).unwrap();
        let key = AddrKey::of(ip("192.0.2.1"));
        assert_eq!(t.admit(ip("192.0.2.1"), &conns[2]).err(), Some(Refusal::Address(key)));
        assert!(t.admit(ip("192.0.2.2"), &conns[2]).is_ok());
        let proxied: Vec<_> = (0..5).map(|_| t.admit(ip("10.9.9.9"), &Arc::new(ConnState::new())).unwrap()).collect();
        assert_eq!(proxied.len(), 5);
        drop(a);
        assert!(t.admit(ip("192.0.2.1"), &conns[2]).is_ok(), "a closed connection gives its place back");
        assert_eq!(t.stats.refused_address.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn at_the_cap_the_longest_idle_goes_and_busy_ones_stay() {
        let t = table(3, 0);
        let conns: Vec<_> = (0..5).map(|_| Arc::new(ConnState::new())).collect();
        let held: Vec<_> = conns[..3].iter().map(|c| t.admit(ip("192.0.2.1"), c).unwrap().0).collect();
        // The first is busy, the third became idle before the second.
        let _busy = conns[0].begin_request();
        conns[1].idle_since.store(50, Ordering::Release);
        conns[2].idle_since.store(20, Ordering::Release);
        let (_fourth, made_room) = t.admit(ip("192.0.2.2"), &conns[3]).unwrap();
        assert!(made_room);
        assert!(futures_util::FutureExt::now_or_never(conns[2].evicted()).is_some(), "the longest idle is told");
        assert!(futures_util::FutureExt::now_or_never(conns[1].evicted()).is_none());
        // The told one's slot is already given back: its drop gives nothing twice.
        drop(held);
        let inner = t.lock();
        assert_eq!(inner.open, 1);
        assert_eq!(t.stats.closed_for_room.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_idle_connection_behind_many_busy_ones_is_found_by_the_next_looks() {
        let t = table(300, 0);
        let conns: Vec<_> = (0..300).map(|_| Arc::new(ConnState::new())).collect();
        let _held: Vec<_> = conns.iter().map(|c| t.admit(ip("192.0.2.1"), c).unwrap()).collect();
        let _busy: Vec<_> =
            conns.iter().enumerate().filter(|(i, _)| *i != 290).map(|(_, c)| c.begin_request()).collect();
        let new = Arc::new(ConnState::new());
        // The first look meets 128 busy ones and sends them to the back, the second too; the third finds it.
        assert_eq!(t.admit(ip("192.0.2.2"), &new).err(), Some(Refusal::Full));
        assert_eq!(t.admit(ip("192.0.2.2"), &new).err(), Some(Refusal::Full));
        assert!(t.admit(ip("192.0.2.2"), &new).is_ok());
        assert!(futures_util::FutureExt::now_or_never(conns[290].evicted()).is_some());
    }

    #[test]
    fn when_every_connection_is_busy_a_new_one_is_refused() {
        let t = table(2, 0);
        let conns: Vec<_> = (0..3).map(|_| Arc::new(ConnState::new())).collect();
        let _held: Vec<_> = conns[..2].iter().map(|c| t.admit(ip("192.0.2.1"), c).unwrap()).collect();
        let _busy: Vec<_> = conns[..2].iter().map(|c| c.begin_request()).collect();
        assert_eq!(t.admit(ip("192.0.2.3"), &conns[2]).err(), Some(Refusal::Full));
        assert_eq!(t.stats.refused_full.load(Ordering::Relaxed), 1);
    }
}
