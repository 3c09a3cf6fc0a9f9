"""Zou & Huang's data-driven effective model of the weight space: its config (`config`) and data
(`data`, PCA of digits), mean-field binary networks (`binary_net`), the collected ensemble
(`collection`), the pairwise Ising model with belief propagation (`model`), Gibbs-sampled moments
(`gibbs`), per-part fits and entropy landscapes (`analysis`), and its report (`report`)."""
