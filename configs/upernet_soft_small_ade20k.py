# UperNet with a SOFT-Small-Norm backbone on ADE20K, 512x512 crops, 160k iterations
# (8 GPUs x 2 images). Optimizer as mmseg's transformer UperNets (AdamW 6e-5, wd 0.01, warmup then
# poly decay, no weight decay on norms and position embeddings). Published: 46.2 mIoU, 54M params.
# The model zoo's name for it is configs/soft/upernet_soft-s-norm_8xb2-160k_ade20k-512x512.py.
_base_ = './soft/upernet_soft-s-norm_8xb2-160k_ade20k-512x512.py'
