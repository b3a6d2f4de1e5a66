"""Judging a bundle on a machine: ``bench`` (latency and accuracy across backends, precisions and
batches), ``verify`` (golden vectors, checksums, metadata), ``compare`` (agreement between logits,
bench-diff), ``timing`` (trtexec's method) and ``report`` (bench reports on disk)."""
