"""HellaSwag scoring (helpers/hellaswag.py, evaluate.py, train.py) against transformers' GPT2LMHeadModel on the
same random weights, on a small file in the official format written here (no download)."""
import json
import os
import re
import shutil
import urllib.request

import numpy as np
import pytest
import torch

from helpers import UserError, checkpoint, data, hellaswag, metrics
from conftest import CHARS, assert_user_error, core_train_args, forked_ranks, make_model, run_inproc, save_checkpoint
from model import GPT

NO_AUTOCAST = torch.autocast('cpu', enabled=False)

# the official file's fields; endings of very different lengths make the lowest sum and the lowest mean part ways
EXAMPLES = [
    ("Roof repair", "A man is kneeling on a roof with a hammer. he",
     ["pulls the old shingles off one by one.", "sings.", "is holding a blue umbrella over a cat.",
      "throws the hammer into a pond and swims after it while a crowd of neighbours cheers him on."], 0),
    ("Washing the dog", "A girl fills a tub with warm water and lifts a small dog into it. She",
     ["rubs shampoo into its fur.", "drives to the airport.", "closes the piano.", "reads."], 0),
    ("Making coffee", "[header] How to brew coffee in a french press [title] Boil the water. [step] Let it cool "
                      "for about thirty seconds before pouring.",
     ["[title] Add the ground coffee to the press. [step] Use about two tablespoons per cup.",
      "[title] Paint the kettle green.", "[title] Plant the beans in the garden and wait a year.",
      "[title] Call a friend."], 0),
    ("Café", "Two friends sit at a café table in Zürich — one of them",
     ["orders two espressos.", "lifts the table above her head and spins.", "is a lamp.",
      "writes a letter to the moon, folds it into a boat and sets it on the lake outside."], 0),
    ("Skiing", "A skier rides the lift to the top of the slope. the skier",
     ["skis down the hill carefully.", "eats the lift.", "turns into a bird.", "plays chess."], 2),
    ("Cooking pasta", "A cook drops pasta into a pot of boiling water and",
     ["stirs it.", "stirs it with a wooden spoon so that it does not stick to the bottom of the pot.",
      "sends it by mail.", "waters the plants."], 1),
    ("Running", "[header] How to start running [title] Buy shoes that fit. [step] Go to a running store",
     [", and ask to try several pairs.", "and buy a hat.", ". Then sleep for a week.",
      "and sell your bicycle to a stranger you meet outside the shop on a rainy Tuesday afternoon."], 3),
]

def write_file(path, examples):
    with open(path, 'w', encoding='utf-8') as f:
        for i, (activity, ctx, endings, label) in enumerate(examples):
            ctx_a, _, ctx_b = ctx.rpartition('. ')
            f.write(json.dumps(dict(ind=i, activity_label=activity, ctx_a=ctx_a + '.', ctx_b=ctx_b, ctx=ctx,
                                    split='val', split_type='indomain', label=label, endings=endings,
                                    source_id=f'test~{i}')) + '\n')
    return str(path)

@pytest.fixture(scope='module')
def examples_file(tmp_path_factory):
    return write_file(tmp_path_factory.mktemp('hellaswag') / 'hellaswag_val.jsonl', EXAMPLES)

def reference_choices(model, path):
    """(label, ending of lowest summed loss, ending of lowest mean loss) per example, one ending at a time, unpadded,
    through transformers; sequences longer than the window lose their first tokens."""
    import tiktoken
    encoding, window, out = tiktoken.get_encoding('gpt2'), model.config.n_positions, []
    for item in map(json.loads, open(path, encoding='utf-8')):
        sums, means = [], []
        for ending in item['endings']:
            ending_tokens = encoding.encode(' ' + ending)
            tokens = torch.tensor(encoding.encode(item['ctx']) + ending_tokens)[-(window + 1):]
            with torch.no_grad():
                logprobs = model(tokens[None, :-1]).logits[0].log_softmax(-1)
            n = min(len(ending_tokens), len(tokens) - 1)
            sums.append(-logprobs[-n:].gather(1, tokens[-n:, None]).sum().item())
            means.append(sums[-1] / n)
        out.append((item['label'], sums.index(min(sums)), means.index(min(means))))
    return out

def correct(choices):
    """(correct by the lowest sum, correct by the lowest mean, examples) of reference_choices."""
    return sum(label == best for label, best, _ in choices), sum(label == best for label, _, best in choices), \
        len(choices)

def accuracies(choices):
    right, right_norm, count = correct(choices)
    return right / count, right_norm / count

@pytest.fixture(scope='module', params=[128, 12], ids=['whole', 'cropped'])
def models(request, tmp_path_factory, examples_file):
    """(our GPT from a transformers folder, the folder, reference_choices) of a GPT-2-shaped model, its random weights
    large enough that the endings' losses differ clearly; with 12 positions some endings are longer than the window."""
    from transformers import GPT2Config, GPT2LMHeadModel
    folder = str(tmp_path_factory.mktemp('hf') / 'model')
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=request.param, n_embd=32, n_layer=2, n_head=2,
                                    initializer_range=0.3)).eval()
    hf.save_pretrained(folder)
    return GPT.from_pretrained(folder).eval(), folder, reference_choices(hf, examples_file)

@pytest.fixture
def bpe_dataset():
    """The name of data/_test_hellaswag_bpe (random GPT-2 ids, no meta.pkl), with EXAMPLES in data/hellaswag."""
    name = '_test_hellaswag_bpe'
    for folder in (name, 'hellaswag'):
        os.makedirs(data.data_dir(folder), exist_ok=True)
    for split in ('train', 'val'):
        np.random.default_rng(0).integers(0, 50257, 2000).astype(np.uint16).tofile(f'{data.data_dir(name)}/{split}.bin')
    write_file(hellaswag.default_path(), EXAMPLES)
    yield name
    for folder in (name, 'hellaswag'):
        shutil.rmtree(data.data_dir(folder))

def test_choices_and_evaluate_py_match_transformers(models, examples_file, tmp_path, bpe_dataset):
    """hellaswag.choose and score, then evaluate.py on the transformers folder and on its weights as a BPE run's."""
    model, folder, reference = models
    examples = hellaswag.load(examples_file)   # all 7: reference holds one choice each
    assert [(e.label, *hellaswag.choose(model, e, 'cpu', NO_AUTOCAST)) for e in examples] == reference
    # the fixture can tell the two rules apart, and a scorer that always picks one ending fails
    assert any(best != best_norm for _, best, best_norm in reference)
    assert len({best for _, best, _ in reference}) > 1 and len({best for _, _, best in reference}) > 1
    model.train()  # scored in eval mode, and left in training mode as it was
    assert hellaswag.score(model, examples, 'cpu', NO_AUTOCAST) == correct(reference) and model.training
    for rank in range(3):  # ranks share the examples: 7 of them, 3, 2 and 2
        assert hellaswag.score(model, examples, 'cpu', NO_AUTOCAST, rank, 3) == correct(reference[rank::3])
    results, (acc, acc_norm) = tmp_path / 'results.json', accuracies(reference)
    common = ('--hellaswag=True', f'--hellaswag_file={examples_file}', '--device=cpu', '--dtype=float32',
              f'--results_file={results}')
    proc = run_inproc('evaluate.py', f'--init_from={folder}', *common, check=True)
    output = json.loads(results.read_text())
    assert (output['hellaswag_acc'], output['hellaswag_acc_norm'], output['hellaswag_examples']) == (acc, acc_norm, 7)
    assert 'splits' not in output  # HellaSwag alone unless the losses are asked for
    assert f"hellaswag: acc {acc:.4f}, acc_norm {acc_norm:.4f} (7 examples" in proc.stdout
    save_checkpoint(model, str(tmp_path / 'out'), bpe_dataset)
    run_inproc('evaluate.py', f'--out_dir={tmp_path / "out"}', '--splits=val', '--hellaswag_examples=3', *common,
               check=True)
    output = json.loads(results.read_text())
    assert (output['hellaswag_acc'], output['hellaswag_acc_norm'], output['hellaswag_examples']) == \
        (*accuracies(reference[:3]), 3)
    assert list(output['splits']) == ['val'] and output['settings']['dataset'] == bpe_dataset

def test_batch_scores_only_the_ending_and_crops_from_the_left():
    example = hellaswag.Example(context=[1, 2, 3, 4], endings=[[5], [6, 7], [8, 9, 10, 11, 12, 13], [14]], label=0)
    x, y = hellaswag.batch(example, block_size=5)
    assert x.tolist() == [[1, 2, 3, 4, 0], [1, 2, 3, 4, 6], [8, 9, 10, 11, 12], [1, 2, 3, 4, 0]]
    assert y.tolist() == [[-1, -1, -1, 5, -1], [-1, -1, -1, 6, 7], [9, 10, 11, 12, 13], [-1, -1, -1, 14, -1]]

def test_evaluate_py_refuses_a_character_model_and_a_negative_limit(tmp_path, examples_file):
    path = save_checkpoint(make_model(), str(tmp_path / 'out'), 'shakespeare_char')
    torch.save(dict(torch.load(path, weights_only=True), tokenizer={'kind': 'char', 'itos': CHARS}), path)
    for model, fragments in ((f'--out_dir={tmp_path / "out"}', ['character-level', 'GPT-2 BPE', '--hellaswag=True']),
                             ('--init_from=gpt2 --hellaswag_examples=-1',  # train.py's words
                              ['hellaswag_examples must be in [0, inf), got -1'])):
        assert_user_error(run_inproc('evaluate.py', *model.split(), '--hellaswag=True', '--device=cpu',
                                     f'--hellaswag_file={examples_file}', f'--results_file={tmp_path / "r.json"}'),
                          *fragments)
    assert os.listdir(tmp_path) == ['out'] and os.listdir(tmp_path / 'out') == ['ckpt.pt']

DAMAGED = {'{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 1': 'line 2 is not JSON',
           '{"ctx": "A man", "endings": ["a", "b", "c"], "label": 1}': "line 2 has no 'endings' list of 4 texts",
           '{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": 4}': "line 2 has 'label' 4",
           '{"ctx": "A man", "endings": ["a", "b", "c", "d"], "label": "1"}': "line 2 has 'label' '1'",
           '{"endings": ["a", "b", "c", "d"], "label": 1}': "line 2 has no 'ctx' text",
           '[1, 2, 3]': 'line 2 is not a JSON object'}

def test_the_file_downloaded_once_limits_and_a_damaged_file_are_one_line(tmp_path, monkeypatch, examples_file):
    assert [e.label for e in hellaswag.load(examples_file, limit=3)] == [label for *_, label in EXAMPLES[:3]]
    assert len(hellaswag.load(examples_file, limit=0)) == len(EXAMPLES)  # 0: all of them, in both scripts
    with pytest.raises(UserError, match='holds 7 examples, fewer than the 8 asked for; pass --hellaswag_examples=7'):
        hellaswag.load(examples_file, limit=8)
    path, first = tmp_path / 'damaged.jsonl', open(examples_file, encoding='utf-8').readline()
    empty = ('', f'it holds 0 examples; use the official file ({hellaswag.URL})')
    for text, why in [(first + line, why) for line, why in DAMAGED.items()] + [empty]:
        path.write_text(text + '\n', encoding='utf-8')
        for limit in (0, 3):  # whatever the limit
            with pytest.raises(UserError) as e:
                hellaswag.load(str(path), limit)
            assert str(e.value).startswith(f"{path} is damaged: {why}") and hellaswag.URL in str(e.value), text
    downloads = []
    def fake_urlretrieve(url, target):  # no network in tests: the "download" copies the test file
        downloads.append(url)
        shutil.copyfile(examples_file, target)
    monkeypatch.setattr(urllib.request, 'urlretrieve', fake_urlretrieve)
    monkeypatch.setattr(data, 'data_dir', lambda name: str(tmp_path / name))
    assert [len(e.endings) for e in hellaswag.load(limit=2)] == [4, 4]
    assert downloads == [hellaswag.URL] and os.listdir(tmp_path / 'hellaswag') == ['hellaswag_val.jsonl']
    # the whole official file must hold its 10,042 examples; the fix for a damaged one is to fetch it again
    with pytest.raises(UserError, match=r'hellaswag_val\.jsonl is damaged: it holds 7 examples, not 10,042; '
                                        r'delete it to download it again'):
        hellaswag.load()
    (tmp_path / 'hellaswag' / 'hellaswag_val.jsonl').write_bytes(b'\xff\xfe not text\n')
    with pytest.raises(UserError, match='not UTF-8 text; delete it to download it again'):
        hellaswag.load()
    assert downloads == [hellaswag.URL]

def test_train_py_scores_at_each_evaluation_shared_by_ddp_and_fsdp_ranks(tmp_path, bpe_dataset):
    """acc_norm at each evaluation, logged, equals the checkpoint's score; DDP's and FSDP's ranks print the same."""
    out_dir = tmp_path / 'out'
    settings = dict(dataset=bpe_dataset, hellaswag=True, hellaswag_examples=7, max_iters=4, eval_interval=4)
    log = run_inproc('train.py', *core_train_args(out_dir, **settings), check=True).stdout
    scores = [float(x) for x in re.findall(r'^step \d+: .*, hellaswag acc_norm ([\d.]+) \(', log, re.M)]
    assert len(scores) == 2
    model = checkpoint.model_from_checkpoint(checkpoint.load(str(out_dir), 'ckpt.pt'))
    _, correct_norm, count = hellaswag.score(model, hellaswag.load(limit=len(EXAMPLES)), 'cpu', NO_AUTOCAST)
    assert scores[1] == round(correct_norm / count, 4)
    logged = [r['hellaswag_acc_norm'] for r in metrics.read_metrics(out_dir / 'metrics.csv') if r['kind'] == 'eval']
    assert logged == [pytest.approx(s, abs=5e-5) for s in scores]
    settings.update(init_from='resume', eval_only=True)
    single = run_inproc('train.py', *core_train_args(out_dir, **settings), check=True).stdout
    step = re.compile(r'^step 5: .*hellaswag acc_norm [\d.]+', re.M)
    for fsdp in (False, True):
        shared = forked_ranks(*core_train_args(out_dir, fsdp=fsdp, gradient_accumulation_steps=2, **settings))
        assert step.findall(shared.stdout) == step.findall(single) and len(step.findall(single)) == 1, \
            (shared.stdout, single)
