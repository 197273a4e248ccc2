//! The kernel's tick, which the data plane reads as its clock for the next-hop caches'
//! age (`bpf_jiffies64`, inlined by the verifier into one load).
use std::time::Duration;

/// The tick's length: the resolution of the coarse clocks, which advance once a tick
/// (`clock_getres(CLOCK_MONOTONIC_COARSE)` is `TICK_NSEC`, 1 s / `CONFIG_HZ`).
pub fn length() -> Duration {
    let mut res = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_getres writes one timespec we own.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) };
    if rc != 0 || (res.tv_sec == 0 && res.tv_nsec == 0) {
        // Every Linux since 2.6.32 answers; 100 Hz is the longest tick it can have.
        return Duration::from_millis(10);
    }
    Duration::new(res.tv_sec as u64, res.tv_nsec as u32)
}

/// `ms` in ticks of `tick`, rounded up and at least one: a cached hop is then never used
/// longer than `ms` plus one tick, the coarse clock's own uncertainty before.
pub fn from_ms(ms: u32, tick: Duration) -> u32 {
    let tick_ns = tick.as_nanos().max(1);
    let ticks = (u128::from(ms) * 1_000_000).div_ceil(tick_ns);
    ticks.clamp(1, u128::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_become_whole_ticks_rounded_up() {
        let hz250 = Duration::from_millis(4);
        assert_eq!(from_ms(1, hz250), 1);
        assert_eq!(from_ms(4, hz250), 1);
        assert_eq!(from_ms(5, hz250), 2);
        assert_eq!(from_ms(10_000, hz250), 2500);
        // HZ 300: a tick of 3 333 333 ns.
        assert_eq!(from_ms(10_000, Duration::from_nanos(3_333_333)), 3001);
        assert_eq!(from_ms(60_000, Duration::from_millis(1)), 60_000);
    }

    #[test]
    fn this_kernel_has_a_tick_between_1_and_10_ms() {
        let t = length();
        assert!(
            t >= Duration::from_millis(1) && t <= Duration::from_millis(10),
            "{t:?}"
        );
    }
}
