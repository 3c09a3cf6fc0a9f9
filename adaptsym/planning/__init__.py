"""Planning a job before it runs: the cost model (`cost`), arithmetic on throughputs that
`jobs.plan_sampler` measures on this machine (`adaptsym plan`)."""
