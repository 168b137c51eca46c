# A kind node image with python3, which the Lumen CNI plugin (exec'd by containerd on the node) runs on.
FROM kindest/node:v1.31.0
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/*
