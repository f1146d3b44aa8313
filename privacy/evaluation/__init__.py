"""The four-dimensional privacy-utility evaluation of the design (DTP / PL / RR / SE).

Everything here works on arrays (uint8 clips ``[N, T, H, W, 3]``, int label vectors,
representation matrices): ``privacy`` imports nothing from ``fl_client`` / ``fl_server``,
so the data (synthetic fleet, real footage) and the encoders' training are supplied by the
caller (``fl_server/eval_pipeline.py`` for ``fedmsr eval``; later the server's leakage tracker).

* :mod:`.baselines`       what is released per clip: pixel baselines and encoders (as the
                          int8 payload the device would upload);
* :mod:`.dtp`             downstream task performance (linear / MLP probes, unseen tasks);
* :mod:`.leakage`         privacy leakage: single-clip and accumulated-k attribute inference,
                          cross-day linkage AUC, PL(k) and the accumulation gain;
* :mod:`.reconstruction`  PSNR / SSIM, decoder and optimisation inversion, gradient inversion;
* :mod:`.efficiency`      latency per clip on one thread, encoder size, bytes per clip;
* :mod:`.report`          Markdown / CSV / JSON table and PNG plots.
"""
