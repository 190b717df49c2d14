"""Training of the diffusion generator (never imported by the runtime).

- :mod:`.cache`: pairs of frames of the ``train`` clips -> the runtime's own conditioning,
  cached outside the repository (``~/.cache/rt-portrait/gen-cache``);
- :mod:`.dataset`: random crops of cached pairs, augmentation, condition dropout;
- :mod:`.losses`: L1 and SSIM in torch (no pretrained networks);
- :mod:`.train`: teacher (flow matching), distillation to 1 and 2 steps, plain regression;
- :mod:`.evaluate`: face-region L1/PSNR/SSIM and sharpness on ``val`` clips against the warp;
- ``python -m rt_portrait.training {cache,train,distill,regress,evaluate}``.
"""
