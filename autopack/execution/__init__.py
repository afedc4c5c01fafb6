"""Phase execution: specs, claims/leases, running a phase, and draining phases in batches."""
