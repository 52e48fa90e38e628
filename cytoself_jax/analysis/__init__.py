"""Analysis of embeddings (numpy in, numbers, tables and pictures out).

Modules: ``scores`` (clustering score, UMAP scores, kNN / classifier top-k, retrieval mAP), ``atlas`` (UMAP and its
scatter pictures), ``spectrum`` (feature spectra, code correlation and clustering, heatmap), ``neighbours``
(protein profiles, nearest proteins), ``interpret`` (spectrum peaks for feature interpretation), ``plots``
(palette, saving, reconstruction panel, training curves). Import the module you need; nothing heavy
(umap, numba) is imported until a UMAP is computed.
"""
