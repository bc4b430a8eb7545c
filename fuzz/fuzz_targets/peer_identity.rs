//! `peer_identity`: see `twinreg_fuzz::peer_identity` (fuzz/src/lib.rs) and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(init: twinreg_fuzz::tally_at_exit(), |data: &[u8]| {
    twinreg_fuzz::count(twinreg_fuzz::peer_identity(data));
});
