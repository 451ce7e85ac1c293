"""The benchmarks (``make bench``): not part of the gateway, never imported by it."""
