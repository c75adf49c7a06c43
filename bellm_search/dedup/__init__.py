"""Near-duplicate detection over a collection: candidate pairs, clusters, keep policies, the job."""
