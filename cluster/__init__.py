"""Where a recipe runs: `submit` sends `memrl train` to a Ray cluster as a Ray job (cluster/submit.py);
ray-cluster.yaml (Ray cluster launcher, AWS), rayjob.yaml (KubeRay) and the Dockerfiles make that cluster."""
