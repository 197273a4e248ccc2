//! Which map slot each tunnel occupies. Pure bookkeeping, no aya.
use rustc_hash::FxHashMap;

use broker_common::maps::{Endpoint4, Endpoint6, UdpEndpoint4};
use ipnet::Ipv6Net;

use super::DataplaneError;

/// A tunnel's key in the endpoint map of its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKey {
    /// `P41_ENDPOINTS`.
    P41(Endpoint4),
    /// `UDP_ENDPOINTS`.
    Udp(UdpEndpoint4),
    /// `V6_ENDPOINTS`.
    V6(Endpoint6),
    /// `AYIYA_IDS`: the client's identity (its `::2`).
    Ayiya([u8; 16]),
    /// None yet: a heartbeat tunnel whose client has not beaten.
    None,
}

/// What is installed for one tunnel, so an update can remove what it no longer has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub slot: u32,
    pub endpoint: EndpointKey,
    pub prefixes: Vec<Ipv6Net>,
    /// The `V4_ROUTES` key (v4v6 client address).
    pub v4: Option<[u8; 4]>,
}

/// How many entries the installed tunnels hold in each lookup map, kept as tunnels come
/// and go so that reporting it costs nothing whatever their number.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub tunnels: u64,
    pub p41: u64,
    pub udp: u64,
    pub v6: u64,
    pub ayiya: u64,
    pub v4_routes: u64,
    pub prefixes: u64,
}

impl Usage {
    fn account(&mut self, i: &Installed, add: bool) {
        let step = |n: &mut u64, by: u64| {
            *n = if add { *n + by } else { n.saturating_sub(by) };
        };
        step(&mut self.tunnels, 1);
        match i.endpoint {
            EndpointKey::P41(_) => step(&mut self.p41, 1),
            EndpointKey::Udp(_) => step(&mut self.udp, 1),
            EndpointKey::V6(_) => step(&mut self.v6, 1),
            EndpointKey::Ayiya(_) => step(&mut self.ayiya, 1),
            EndpointKey::None => {}
        }
        step(&mut self.v4_routes, u64::from(i.v4.is_some()));
        step(&mut self.prefixes, i.prefixes.len() as u64);
    }
}

/// Dense slot allocation: freed slots are reused before new ones are taken.
///
/// What is installed is kept by slot (a vector: taking over a million tunnels is one
/// pass in slot order, without hashing what they hold) and found by id through a small
/// map of id to slot.
#[derive(Debug)]
pub struct SlotTable {
    by_slot: Vec<Option<(u32, Installed)>>,
    /// Fx: ids are plain integers, and a million of them are hashed at every start.
    slot_of: FxHashMap<u32, u32>,
    free: Vec<u32>,
    next: u32,
    max: u32,
    usage: Usage,
    /// The AYIYA tunnels: their endpoints are the data plane's to learn, and are read
    /// back every few seconds.
    ayiya: std::collections::BTreeSet<u32>,
}

impl SlotTable {
    pub fn new(max: u32) -> Self {
        Self {
            by_slot: Vec::new(),
            slot_of: FxHashMap::default(),
            free: Vec::new(),
            next: 0,
            max,
            usage: Usage::default(),
            ayiya: Default::default(),
        }
    }

    /// A table holding what an earlier controller left in the maps, `used` in slot order.
    /// An id found in a second slot (only a killed update leaves that) keeps its first;
    /// the second slots are returned, to be emptied.
    pub fn adopted(max: u32, used: Vec<(u32, Installed)>) -> (Self, Vec<u32>) {
        let mut t = Self::new(max);
        t.slot_of.reserve(used.len());
        let mut duplicates = Vec::new();
        for (id, i) in used {
            let slot = i.slot;
            if t.slot_of.contains_key(&id) {
                duplicates.push(slot);
                continue;
            }
            t.slot_of.insert(id, slot);
            t.usage.account(&i, true);
            if matches!(i.endpoint, EndpointKey::Ayiya(_)) {
                t.ayiya.insert(id);
            }
            if t.by_slot.len() <= slot as usize {
                t.by_slot.resize_with(slot as usize + 1, || None);
            }
            t.by_slot[slot as usize] = Some((id, i));
        }
        t.next = t.by_slot.len() as u32;
        // Lowest free slot last, so it is reused first.
        t.free = (0..t.next)
            .rev()
            .filter(|s| t.by_slot[*s as usize].is_none())
            .collect();
        (t, duplicates)
    }

    pub fn get(&self, id: u32) -> Option<&Installed> {
        self.at(*self.slot_of.get(&id)?)
    }

    /// What is installed at `slot`, if anything.
    pub fn at(&self, slot: u32) -> Option<&Installed> {
        self.by_slot.get(slot as usize)?.as_ref().map(|(_, i)| i)
    }

    /// A slot no tunnel uses. It counts as taken once [`SlotTable::insert`] records it;
    /// a caller that fails in between simply leaves it to the next allocation.
    pub fn allocate(&mut self) -> Result<u32, DataplaneError> {
        if let Some(slot) = self.free.last() {
            return Ok(*slot);
        }
        if self.next < self.max {
            Ok(self.next)
        } else {
            Err(DataplaneError::Full { max: self.max })
        }
    }

    pub fn insert(&mut self, id: u32, installed: Installed) {
        let slot = installed.slot;
        if self.free.last() == Some(&slot) {
            self.free.pop();
        } else if slot == self.next {
            self.next += 1;
        }
        self.usage.account(&installed, true);
        if matches!(installed.endpoint, EndpointKey::Ayiya(_)) {
            self.ayiya.insert(id);
        } else {
            self.ayiya.remove(&id);
        }
        if let Some(old_slot) = self.slot_of.insert(id, slot) {
            if let Some((_, old)) = self.by_slot[old_slot as usize].take() {
                self.usage.account(&old, false);
            }
        }
        if self.by_slot.len() <= slot as usize {
            self.by_slot.resize_with(slot as usize + 1, || None);
        }
        self.by_slot[slot as usize] = Some((id, installed));
    }

    pub fn release(&mut self, id: u32) {
        let Some(slot) = self.slot_of.remove(&id) else {
            return;
        };
        if let Some((_, i)) = self.by_slot[slot as usize].take() {
            self.ayiya.remove(&id);
            self.usage.account(&i, false);
            self.free.push(slot);
        }
    }

    /// The first slot never handed out.
    pub fn next(&self) -> u32 {
        self.next
    }

    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// The AYIYA tunnels with their slots, in id order.
    pub fn ayiya(&self) -> impl Iterator<Item = (u32, &Installed)> + '_ {
        self.ayiya
            .iter()
            .filter_map(|id| Some((*id, self.get(*id)?)))
    }

    /// Every tunnel with what is installed for it, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Installed)> + '_ {
        self.by_slot
            .iter()
            .filter_map(|e| e.as_ref().map(|(id, i)| (*id, i)))
    }

    /// Every tunnel's id and slot, by id.
    pub fn slots_by_id(&self) -> Vec<(u32, u32)> {
        let mut v: Vec<(u32, u32)> = self.slot_of.iter().map(|(id, s)| (*id, *s)).collect();
        v.sort_unstable();
        v
    }

    pub fn ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.slot_of.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: EndpointKey = EndpointKey::P41(Endpoint4 {
        remote: [198, 51, 100, 10],
        local: [192, 0, 2, 1],
    });

    fn at(slot: u32) -> Installed {
        Installed {
            slot,
            endpoint: EP,
            prefixes: vec![],
            v4: None,
        }
    }

    #[test]
    fn slots_are_dense_and_reused() {
        let mut t = SlotTable::new(3);
        for id in 1..=3 {
            let s = t.allocate().unwrap();
            assert_eq!(s, id - 1);
            t.insert(id, at(s));
        }
        assert!(matches!(t.allocate(), Err(DataplaneError::Full { max: 3 })));
        t.release(2);
        let s = t.allocate().unwrap();
        assert_eq!(s, 1);
        t.insert(9, at(s));
        assert_eq!(t.ids(), vec![1, 3, 9]);
        assert_eq!(t.slots_by_id(), vec![(1, 0), (3, 2), (9, 1)]);
        assert_eq!(t.get(9).unwrap().slot, 1);
    }

    #[test]
    fn adopted_slots_are_kept_and_holes_reused_lowest_first() {
        let (mut t, duplicates) = SlotTable::adopted(8, vec![(7, at(1)), (9, at(4)), (7, at(6))]);
        assert_eq!(duplicates, vec![6], "an id's first slot is its own");
        assert_eq!(t.get(9).unwrap().slot, 4);
        assert_eq!(t.get(7).unwrap().slot, 1);
        for want in [0, 2, 3, 5] {
            let s = t.allocate().unwrap();
            assert_eq!(s, want);
            t.insert(100 + s, at(s));
        }
    }

    #[test]
    fn usage_follows_inserts_replacements_and_releases() {
        let (mut t, _) = SlotTable::adopted(8, vec![(7, at(1))]);
        let udp = Installed {
            endpoint: EndpointKey::Udp(UdpEndpoint4 {
                remote: [198, 51, 100, 1],
                local: [192, 0, 2, 1],
                remote_port: [0, 1],
                local_port: 3653u16.to_be_bytes(),
            }),
            prefixes: vec![
                "2001:db8::/64".parse().unwrap(),
                "2001:db8:1::/56".parse().unwrap(),
            ],
            ..at(2)
        };
        t.insert(8, udp.clone());
        // Replaced: the old one's entries no longer count.
        t.insert(
            8,
            Installed {
                v4: Some([203, 0, 113, 1]),
                ..udp
            },
        );
        assert_eq!(
            t.usage(),
            Usage {
                tunnels: 2,
                p41: 1,
                udp: 1,
                v4_routes: 1,
                prefixes: 2,
                ..Default::default()
            }
        );
        t.insert(
            9,
            Installed {
                endpoint: EndpointKey::Ayiya([1; 16]),
                ..at(3)
            },
        );
        assert_eq!(
            t.ayiya().map(|(id, i)| (id, i.slot)).collect::<Vec<_>>(),
            vec![(9, 3)]
        );
        t.release(9);
        assert_eq!(t.ayiya().count(), 0);
        t.release(8);
        t.release(7);
        t.release(7);
        assert_eq!(t.usage(), Usage::default());
    }

    #[test]
    fn an_allocation_not_recorded_is_handed_out_again() {
        let mut t = SlotTable::new(2);
        assert_eq!(t.allocate().unwrap(), 0);
        assert_eq!(t.allocate().unwrap(), 0);
    }
}
