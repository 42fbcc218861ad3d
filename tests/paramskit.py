"""Which params a stage reads: ``recording(cfg, reads)`` is the ``Params`` handed to a stage's
``main``, with every value the stage reads recorded in ``reads`` by its dotted key
(``train.sft.max_length``).

The sections are recording subclasses of their own models (isinstance checks and pydantic fields
typed with them take them as they are) and the free-form mappings (``datasets``, ``merge_data.mix``,
``train.sft``, ...) are ``RecordingDict``s; every other value is the real one, recorded as it is
read. Reading a section or a mapping only to reach into it records nothing; reading all of it
(``model_dump``, ``dict(x)``, ``**x``, iteration, ``items()``, comparison, printing) records its key.
Copies a stage makes (``model_copy``, ``copy.deepcopy``, ``dict.copy``) go on recording into the same
``reads``. ``paths`` is not params (dvc.yaml's vars): it is handed on as it is, unrecorded.
"""

from __future__ import annotations

import copy
import functools

from pydantic import BaseModel, PrivateAttr

from src.config import Params

NOT_PARAMS = frozenset({"paths"})  # fields of Params that come from dvc.yaml's vars, not from params.yaml


class Reads(set):
    """The dotted keys read; the copies of a recording value share it rather than copy it."""

    def __copy__(self) -> Reads:
        return self

    def __deepcopy__(self, memo: dict) -> Reads:
        return self


def recording(cfg: Params, reads: Reads) -> Params:
    """``cfg`` with every params value the stage reads recorded in ``reads``."""
    return _wrap(cfg, "", reads)


def _wrap(value, key: str, reads: Reads):
    """A recording copy of a section or mapping at ``key``; any other value as it is."""
    if isinstance(value, BaseModel):
        fields = {name: getattr(value, name) if _join(key, name) in NOT_PARAMS
                  else _wrap(getattr(value, name), _join(key, name), reads)
                  for name in type(value).model_fields}
        recorded = recording_class(type(value)).model_construct(value.model_fields_set, **fields)
        recorded._params_key, recorded._params_reads = key, reads
        return recorded
    if isinstance(value, dict):
        return RecordingDict({k: _wrap(v, _join(key, k), reads) for k, v in value.items()}, key, reads)
    return value


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


class RecordingSection:
    """Mixed into a section's model by ``recording_class``: each field read is recorded, and whole
    reads (``model_dump``, iteration, comparison, printing) as reads of every field they take in."""

    def __getattribute__(self, name: str):
        value = super().__getattribute__(name)
        if name in type(self).model_fields and not isinstance(value, (RecordingSection, RecordingDict)):
            self.read_field(name)
        return value

    def read_field(self, name: str) -> None:
        key = _join(self._params_key, name)
        if key not in NOT_PARAMS:
            self._params_reads.add(key)

    def read_whole(self, include=None, exclude=None) -> None:
        """Every field ``include`` and ``exclude`` leave (as pydantic's ``model_dump`` takes them; a
        nested one, ``{"train": {"sft"}}``, counts the section it names whole)."""
        if include is None and exclude is None and self._params_key:
            self._params_reads.add(self._params_key)
            return
        for name in type(self).model_fields:
            left_out = exclude is not None and name in exclude and (not isinstance(exclude, dict)
                                                                    or exclude[name] is True)
            if (include is None or name in include) and not left_out:
                self.read_field(name)

    def model_dump(self, **kwargs):
        self.read_whole(kwargs.get("include"), kwargs.get("exclude"))
        return super().model_dump(**kwargs)

    def model_dump_json(self, **kwargs):
        self.read_whole(kwargs.get("include"), kwargs.get("exclude"))
        return super().model_dump_json(**kwargs)

    def __iter__(self):
        self.read_whole()
        return super().__iter__()

    def __eq__(self, other) -> bool:
        """Equal to a section of the same model, recording or not, with the same values."""
        self.read_whole()
        if not isinstance(other, BaseModel):
            return NotImplemented
        return type(other) in (type(self), type(self).__bases__[1]) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        self.read_whole()
        return type(self).__bases__[1].__hash__(self)

    def __repr_args__(self):
        self.read_whole()
        return super().__repr_args__()

    def __repr_name__(self) -> str:
        return type(self).__bases__[1].__name__


@functools.cache
def recording_class(cls: type[BaseModel]) -> type[BaseModel]:
    """``cls`` with RecordingSection mixed in: a subclass, so that isinstance checks and pydantic
    fields typed ``cls`` take it."""
    return type(f"Recording{cls.__name__}", (RecordingSection, cls), {
        "__module__": __name__,
        "__annotations__": {"_params_key": "str", "_params_reads": "Reads"},
        "_params_key": PrivateAttr(),
        "_params_reads": PrivateAttr(),
    })


class RecordingDict(dict):
    """A free-form mapping of params that records what is read of it: one key by ``[k]``, ``get``
    or ``in`` (reaching into a section or mapping held under a key records nothing); the whole
    mapping by iteration, ``keys``, ``values``, ``items``, ``len``, ``dict(x)`` and ``**x`` (which go
    through ``keys``), comparison, ``|``, printing and ``json.dumps`` (which goes through ``items``)."""

    def __init__(self, data: dict, key: str, reads: Reads):
        super().__init__(data)
        self.params_key, self.params_reads = key, reads

    def read_key(self, k) -> None:
        self.params_reads.add(_join(self.params_key, str(k)))

    def read_whole(self) -> None:
        self.params_reads.add(self.params_key)

    def __getitem__(self, k):
        if not isinstance(super().get(k), (RecordingSection, RecordingDict)):  # a value, or no such key
            self.read_key(k)
        return super().__getitem__(k)

    def get(self, k, default=None):
        if not isinstance(super().get(k), (RecordingSection, RecordingDict)):
            self.read_key(k)
        return super().get(k, default)

    def __contains__(self, k) -> bool:
        self.read_key(k)
        return super().__contains__(k)

    def __iter__(self):
        self.read_whole()
        return super().__iter__()

    def __reversed__(self):
        self.read_whole()
        return super().__reversed__()

    def keys(self):
        self.read_whole()
        return super().keys()

    def values(self):
        self.read_whole()
        return super().values()

    def items(self):
        self.read_whole()
        return super().items()

    def __len__(self) -> int:
        self.read_whole()
        return super().__len__()

    def __eq__(self, other) -> bool:
        self.read_whole()
        return super().__eq__(other)

    def __ne__(self, other) -> bool:
        self.read_whole()
        return super().__ne__(other)

    def __or__(self, other):
        self.read_whole()
        return super().__or__(other)

    def __ror__(self, other):
        self.read_whole()
        return super().__ror__(other)

    def copy(self) -> RecordingDict:
        """A copy (``copy.copy`` too) reads nothing; it records what is read of it."""
        return RecordingDict(dict(dict.items(self)), self.params_key, self.params_reads)

    __copy__ = copy

    def __deepcopy__(self, memo: dict) -> RecordingDict:
        return RecordingDict({k: copy.deepcopy(v, memo) for k, v in dict.items(self)}, self.params_key,
                             self.params_reads)

    def __repr__(self) -> str:
        self.read_whole()
        return super().__repr__()
