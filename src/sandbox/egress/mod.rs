//! The egress proxy: the only way out of a jail, deciding every connection by the phase's policy and recording each decision.
