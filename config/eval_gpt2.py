# Loss of OpenAI's gpt2 on OpenWebText, as a baseline: python train.py config/eval_gpt2.py
batch_size = 8
eval_iters = 500  # use more iterations to get a good estimate
eval_only = True
wandb_log = False
init_from = 'gpt2'
