"""The built-in methods, one name per folder of ``nimblebert.methods``. The registry imports a folder (which runs its
``register_method`` call) the first time its method is asked for; ``list_methods`` imports them all."""

BUILTIN = ("dynabert", "fastbert", "finetune", "nasbert", "ssa", "tinybert", "trbert")
