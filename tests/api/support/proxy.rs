//! A loopback TCP proxy that can delay, cut and blackhole the link to a registry.
