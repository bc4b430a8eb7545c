//! A 3-member etcd cluster on loopback, for tests about losing members.
