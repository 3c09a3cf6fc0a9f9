"""Zou & Huang's data-driven effective model of the weight space: mean-field binary networks
(`binary_net`), their ensembles (`ensemble`), the pairwise Ising model with belief propagation
(`model`), Gibbs-sampled moments (`gibbs`), per-part fits and entropy landscapes (`analysis`), and
its report (`report`)."""
