import pytest

from hf_spam.models.loading import SHAPES
from hf_spam.models.pretrained import EMBEDDED
from hf_spam.training.arguments import parse_args

from .conftest import ROOT


def _write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_sets_defaults_and_cli_flags_override(tmp_path):
    config = _write(
        tmp_path,
        "model_name_or_path: gpt2-medium\nnum_train_epochs: 2\nlearning_rate: 1.0e-4\nbalance: none\n"
        f"output_dir: {tmp_path / 'out'}\n",
    )
    model_args, data_args, training_args = parse_args(["--config", config, "--num_train_epochs", "7"])
    assert model_args.model_name_or_path == "gpt2-medium"
    assert data_args.balance == "none"
    assert training_args.learning_rate == pytest.approx(1e-4)
    assert training_args.num_train_epochs == 7


def test_defaults_are_the_books_recipe(tmp_path):
    model_args, data_args, args = parse_args(["--output_dir", str(tmp_path)])
    assert (model_args.model_name_or_path, model_args.trainable, model_args.dropout) == ("gpt2", "last_block", 0.0)
    assert (data_args.dedupe, data_args.balance, data_args.split_ratios) == (True, "undersample", [0.7, 0.1, 0.2])
    assert args.num_train_epochs == 5 and args.per_device_train_batch_size == 8
    assert args.learning_rate == pytest.approx(5e-5) and args.weight_decay == pytest.approx(0.1)
    assert args.lr_scheduler_type == "constant" and args.seed == 123 and args.eval_strategy == "epoch"
    assert args.ddp_find_unused_parameters is False


def test_unknown_yaml_key_fails_with_its_name(tmp_path):
    config = _write(tmp_path, "num_train_epochs: 2\nlearning_rat: 1.0e-4\n")
    with pytest.raises(ValueError, match="learning_rat"):
        parse_args(["--config", config])


def test_unknown_cli_flag_fails_with_its_name(tmp_path):
    with pytest.raises(ValueError, match="--no_such_flag"):
        parse_args(["--output_dir", str(tmp_path), "--no_such_flag", "1"])


def test_yaml_value_outside_choices_fails(tmp_path):
    config = _write(tmp_path, "balance: oversample\n")
    with pytest.raises(ValueError, match="balance must be one of"):
        parse_args(["--config", config])


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_parse(name):
    model_args, _, training_args = parse_args(["--config", str(ROOT / "configs" / name)])
    assert training_args.seed == 123
    assert model_args.model_name_or_path in {*SHAPES, *EMBEDDED}
    if model_args.init == "pretrained" and model_args.model_name_or_path in SHAPES:
        # without Hub access, `make train` and the other gpt2 recipes train an embedded model instead
        fallback = model_args.offline_fallback
        if fallback.endswith(".yaml"):  # a config of its own, found beside this one
            fallback_args, _, _ = parse_args(["--config", fallback])
            assert fallback_args.model_name_or_path in EMBEDDED and fallback_args.trainable == "last_block"
        else:
            assert fallback in EMBEDDED


@pytest.mark.parametrize("value", ["1.5", "-0.1", "1"])
def test_max_fpr_outside_0_1_is_a_config_error(value):
    from hf_spam.training.arguments import ConfigError

    with pytest.raises(ConfigError, match="max_fpr must be a fraction"):
        parse_args(["--max_fpr", value])


def test_a_config_that_is_not_yaml_names_the_file_line_and_column(tmp_path):
    from hf_spam.training.arguments import ConfigError

    path = _write(tmp_path, "learning_rate: 5e-5\ntrainable: [last_block\n")
    with pytest.raises(ConfigError, match=r"config.yaml:3:1: not valid YAML"):
        parse_args(["--config", path])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--learning_rate", "-1"], "learning_rate must be a positive number"),
        (["--learning_rate", "0"], "learning_rate must be a positive number"),
        (["--num_train_epochs", "0"], "num_train_epochs must be positive"),
        (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be at least 1"),
        (["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be at least 1"),
        (["--weight_decay", "-0.1"], "weight_decay must not be negative"),
    ],
)
def test_out_of_range_training_values_are_one_config_error(flags, message):
    from hf_spam.training.arguments import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_args(flags)


def test_train_turns_them_into_one_line_and_exit_code_2(tmp_path, caplog):
    from hf_spam.training.run import run

    assert run(["--learning_rate", "-1", "--output_dir", str(tmp_path / "out")]) == 2
    assert "learning_rate must be a positive number" in caplog.text
    assert not (tmp_path / "out").exists()


def test_the_books_recipe_is_written_once_and_the_config_spells_it_out():
    """The dataclass defaults are the recipe; configs/gpt2-small.yaml, bench and experiments say the same."""
    from hf_spam.reports.bench import FULL
    from hf_spam.reports.experiments import RECIPE
    from hf_spam.training.arguments import book_recipe, load_yaml, parse_args

    recipe = book_recipe()
    config = load_yaml(ROOT / "configs" / "gpt2-small.yaml")
    _, _, yaml_args = parse_args(["--config", str(ROOT / "configs" / "gpt2-small.yaml")])
    _, _, default_args = parse_args([])
    for name in recipe:
        if name != "trainable":
            assert getattr(yaml_args, name) == getattr(default_args, name), name
        assert str(FULL[name]) == recipe[name] and RECIPE[RECIPE.index(f"--{name}") + 1] == recipe[name]
    assert config["trainable"] == recipe["trainable"] == "last_block"
    assert recipe["learning_rate"] == "5e-05" and recipe["num_train_epochs"] == "5.0" and recipe["seed"] == "123"
