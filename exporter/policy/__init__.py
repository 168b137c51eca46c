"""Kubernetes NetworkPolicy: manifests (model), label selectors, the decision engine, explain/what-if.

Pure logic: no kernel, no root. The datapath compiles what engine.py decides into BPF maps.
"""
