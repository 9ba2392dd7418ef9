"""Experiments: definitions and assignment (`spec`), their copy in Redis shared by replicas (`store`), what
each variant served and the feedback on it (`results`), and the statistics that compare variants (`welch`)."""
