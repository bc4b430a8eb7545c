//! What is asked of a target, independent of how it is reached: which operation a ticket is, which
//! instance it is for, and what an instance's record looks like. twinreg, the echo server and the
//! etcd baseline all get the same sequence of operations.

use std::fmt;

use clap::ValueEnum;

/// The operation mix of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Op {
    /// Every request registers (an upsert that changes the record).
    Register,
    /// Every request heartbeats an instance registered beforehand.
    Heartbeat,
    /// One request in ten registers, the others heartbeat.
    Mix,
}

/// One request: the operation and the instance number it is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Register(u64),
    Heartbeat(u64),
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Heartbeat => "heartbeat",
            Self::Mix => "mix",
        }
    }

    /// Whether the instances must exist before the run: a heartbeat of an unknown one is a 404.
    pub fn needs_registered_instances(self) -> bool {
        self != Self::Register
    }

    /// The request for `ticket` among `instances` instances. Consecutive tickets rotate over the
    /// instances; in a mix, registers and heartbeats each have their own rotation so both cover
    /// every instance even when the instance count is a multiple of ten.
    pub fn pick(self, ticket: u64, instances: u64) -> Request {
        let n = instances.max(1);
        match self {
            Self::Register => Request::Register(ticket % n),
            Self::Heartbeat => Request::Heartbeat(ticket % n),
            Self::Mix if ticket.is_multiple_of(10) => Request::Register((ticket / 10) % n),
            Self::Mix => Request::Heartbeat((ticket - ticket / 10 - 1) % n),
        }
    }
}

/// The instance id of instance number `i`.
pub struct InstanceId(pub u64);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bench-{}", self.0)
    }
}

/// A distinct private address per instance, `10.0.x.y` for the first 65,536.
pub struct Address(pub u64);

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = self.0;
        write!(
            f,
            "10.{}.{}.{}",
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        )
    }
}

/// The port of an instance's `generation`-th register: alternating when every register must be a
/// real change, so that no write is an idempotent no-op a gateway could skip.
pub fn port(generation: u32, change: bool) -> u16 {
    if change && generation % 2 == 1 {
        8081
    } else {
        8080
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mix_is_one_register_in_ten_and_covers_every_instance() {
        let n = 20;
        let picks: Vec<_> = (0..10 * n).map(|t| Op::Mix.pick(t, n)).collect();
        let registers: Vec<_> = picks
            .iter()
            .filter_map(|r| match r {
                Request::Register(i) => Some(*i),
                Request::Heartbeat(_) => None,
            })
            .collect();
        assert_eq!(registers, (0..n).collect::<Vec<_>>());
        let mut beats: Vec<_> = picks
            .iter()
            .filter_map(|r| match r {
                Request::Heartbeat(i) => Some(*i),
                Request::Register(_) => None,
            })
            .collect();
        beats.sort_unstable();
        beats.dedup();
        assert_eq!(beats, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn addresses_are_distinct_private_ipv4() {
        assert_eq!(Address(0).to_string(), "10.0.0.0");
        assert_eq!(Address(258).to_string(), "10.0.1.2");
        assert_eq!(Address(99_999).to_string(), "10.1.134.159");
        assert_eq!(InstanceId(7).to_string(), "bench-7");
    }
}
