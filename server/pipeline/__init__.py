"""What a worker does with one job, as pure functions of (pool, upload, spec): train or fit the teacher,
score the pool, audit leakage, select candidates under the budget, validate them with proxy students, encode
the payload and its preview. The worker, the benchmarks and the Ray executor all call the same functions.
"""
