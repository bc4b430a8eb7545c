//! Registries fail, registrations survive: fault injection against real servers.
