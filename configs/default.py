"""The article's SimpleCNN with BatchNorm on Fashion-MNIST, one epoch.

Every field can be overridden on the command line, e.g.
  python -m bnlab train --config configs/default.py --config.norm=gn --workdir runs/x
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Data: fashion_mnist (Debian's dataset-fashion-mnist, $BNLAB_DATA_DIR or
    # data_dir), fashion_mnist_rows (its rows as padded variable-length sequences,
    # for seq_cnn), synthetic, or a tensorflow-datasets name such as cifar10.
    config.dataset = "fashion_mnist"
    config.data_dir = placeholder(str)
    config.train_size = placeholder(int)  # a fixed subset of the train split
    config.test_size = placeholder(int)  # evaluate on the first n test examples (all: unset)
    config.augment = False  # random crop (pad 4) + horizontal flip

    # Model: simple_cnn (the article's), resnet20, plain_cnn, mlp, seq_cnn (sequences).
    config.model = "simple_cnn"
    config.depth = 20  # plain_cnn: conv layers
    config.width = 16  # plain_cnn: channels of the first stage
    config.dtype = "float32"  # compute dtype; norm statistics are always float32

    # Normalization: bn, ln, in, gn, none.
    config.norm = "bn"
    config.norm_placement = "before_activation"  # or after_activation
    config.norm_fc1 = False  # simple_cnn: normalize fc1 too (the article's net does not)
    # seq_cnn on fashion_mnist_rows: BN's statistics over the real steps only, not
    # the padding (masked BN); LN and GN normalize each step and never see padding.
    config.mask_padding = False
    config.norm_epsilon = 1e-5
    config.bn_momentum = 0.9  # running = 0.9·running + 0.1·batch (PyTorch's momentum=0.1)
    # BN's running variance averages the unbiased batch variance σ²_B·m/(m−1) (m: the
    # values one statistic averages), as the BN paper (Alg. 2) and PyTorch do: the
    # biased σ²_B underestimates the population variance, by 1/m, which matters at
    # small m (the MLP at batch 2: m = 2, half the variance). False: the biased σ²_B
    # (Flax's convention). Batch normalization itself always uses σ²_B.
    config.bn_unbiased_running_var = True
    config.virtual_batch_size = placeholder(int)  # ghost BN: statistics per sub-batch
    # Noisy BN (Santurkar et al. 2018): in training, each BN output value y becomes
    # s·y + m, s ~ U(1, 1 + bn_noise), m ~ U(−bn_noise, bn_noise), redrawn every step.
    config.bn_noise = 0.0
    config.bn_noise_static = False  # the same draw at every step: noise, but no shift
    config.num_groups = 8  # gn: groups per layer (the GN paper's 32 exceeds conv1's 16 channels)
    config.group_size = placeholder(int)  # gn: channels per group; overrides num_groups

    # Devices and batch statistics (docs/ARCHITECTURE.md).
    config.parallel = "none"  # none (one device, jit), pmap, shard_map
    config.num_devices = placeholder(int)  # data-parallel devices; all when unset
    config.bn_sync = "global"  # BN statistics over: global (all devices), local, or k (groups)
    config.bn_eval = "ema"  # comma list of ema (running averages), precise (PreciseBN), batch
    config.precise_bn_batches = 200  # training batches PreciseBN averages over
    # Multi-process: set these to launch by hand; Slurm/Open MPI are detected.
    config.coordinator_address = placeholder(str)  # host:port of process 0
    config.num_processes = placeholder(int)
    config.process_id = placeholder(int)

    # Optimization.
    config.optimizer = "sgd"  # or adamw
    config.learning_rate = 0.05
    config.momentum = 0.9
    config.nesterov = False
    config.weight_decay = 0.0
    config.decay_norm_params = False  # weight decay on norm scale/bias too
    config.schedule = "constant"  # constant, cosine, step
    config.warmup_steps = 0
    config.step_boundaries = (0.5, 0.75)  # step schedule: fractions of the run
    config.step_decay = 0.1

    # Length and logging.
    config.batch_size = 64
    config.num_epochs = 1.0
    config.num_steps = placeholder(int)  # overrides num_epochs
    config.eval_batch_size = 1000
    # Evaluations along the way (eval_every) on the first n test examples only; the
    # last evaluation always uses the whole test set (test_size's). Curves for steps
    # to a target cost a tenth with 1,000 of Fashion-MNIST's 10,000: the
    # learning-rate experiment spent 77% of its time evaluating (measured).
    config.curve_test_size = placeholder(int)
    # At the end, the model evaluated (running statistics, no dropout of batches) on
    # its whole training set too: final_train_accuracy / final_train_loss, the train
    # side of a generalization gap (train_accuracy is the running mean over the last
    # training batches, in training mode, while the weights still moved).
    config.eval_train_set = False
    # At the end, robustness to small input changes (C12), on the curves' test examples
    # (curve_test_size; all without it), the model as evaluated (running statistics):
    # accuracy with Gaussian noise of this std added to every pixel (0-1 pixel scale,
    # the image clipped to it), and after one FGSM step of this size (Goodfellow et
    # al. 2015; L∞ on the same scale). 0 = not measured.
    config.robust_noise = 0.0
    config.robust_fgsm = 0.0
    # At the end of a BN run, how far a batch's BN statistics lie from the data set's
    # (C11) for batches of these sizes, e.g. (2, 8, 32, 128): stat_error_mean_bB (mean
    # over channels of |μ_B − μ|/σ) and stat_error_var_bB (|σ²_B/σ² − 1|), over the BN
    # layers, against the statistics of 4,096 training examples. () = not measured.
    config.stat_error_batches = ()
    # Steps fused into one call (lax.scan) over the dataset held on the device: fewer
    # launches for small batches (SimpleCNN at batch 8 on an H100: 4,169 against 832
    # steps/s). 0 = automatic: log_every steps per call on an accelerator when the run
    # allows it (one device, no augmentation), one step per call otherwise and on a
    # CPU, where fusing was slower (measured). Not part of the run's identity.
    config.steps_per_call = 0
    # On a CPU: "auto" compiles a step with YNNPACK's elementwise and reduction
    # fusions when XLA counts >= 6e8 FLOPs in it (ResNet-20 at batch 128: 1.55x on
    # the 2-core CI machine; small steps lose), "xla" never, "ynnpack" always
    # (bnlab/fast/xla_cpu.py). Not part of the run's identity; ignored on accelerators.
    config.cpu_fusion = "auto"
    config.log_every = 50
    config.eval_every = placeholder(int)  # steps; the test set is always evaluated at the end
    config.target_accuracy = placeholder(float)  # record steps to this test accuracy
    # Diagnostics in metrics.jsonl: grad_norm/LAYER, the L2 norm of each top-level
    # layer's gradient, averaged over the steps since the last log.
    config.log_grad_norms = False
    # At each log step, on a training batch of its own (probes.diagnostics_function):
    # act_mean/LAYER and act_std/LAYER, each top-level layer's output; and with
    # log_landscape, the loss landscape along the gradient (loss range, gradient
    # change, effective β-smoothness) and each layer's internal covariate shift
    # (ics/LAYER, ics_cos/LAYER), as Santurkar et al. 2018 measure them.
    config.log_activations = False
    config.log_landscape = False
    # Orbax checkpoint every n steps (a multiple of log_every); an interrupted run
    # (killed, preempted) resumes from the latest one when relaunched.
    config.checkpoint_every = placeholder(int)
    return config
