# A small stand-in for nixpkgs' `lib`, enough to evaluate nix/modules/*.nix without nixpkgs
# (which this project's machines cannot fetch). It implements the parts of the module system
# the modules use, with nixpkgs' names and semantics:
#
#   - evalModules: imports, function modules, `options`/`config` or shorthand modules,
#     specialArgs, a lazy `config` fixpoint, and an error for a definition of an option that
#     does not exist (also under a false mkIf, as in nixpkgs — which is why a guarded
#     `environment.persistence` must use optionalAttrs);
#   - mkIf, mkMerge, mkOverride/mkDefault/mkForce/mkOptionDefault, with priorities;
#   - types with check + merge: bool, str, int and ints.*, port, float, number, enum,
#     strMatching, path, package, nullOr, listOf, nonEmptyListOf, attrsOf, submodule,
#     either/oneOf, addCheck, anything, unspecified; type errors name the option;
#   - the helpers the modules call (optional, optionalAttrs, concatStringsSep, ...).
#
# It is not nixpkgs: when it disagrees with the real lib, the real lib wins and this file is
# wrong. The same modules and test harness run unchanged against a real nixpkgs `lib`
# (test/nix/eval.nix takes `lib` as an argument), which is how this stub is kept honest.
let
  inherit (builtins)
    all
    any
    attrNames
    concatLists
    concatStringsSep
    elem
    elemAt
    filter
    foldl'
    genList
    hasAttr
    head
    isAttrs
    isBool
    isFloat
    isFunction
    isInt
    isList
    isPath
    isString
    length
    listToAttrs
    mapAttrs
    match
    replaceStrings
    stringLength
    substring
    tail
    toJSON
    ;

  # ------------------------------------------------------------------ general helpers

  id = x: x;
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalAttrs = cond: as: if cond then as else { };
  optionalString = cond: s: if cond then s else "";
  concatMap = f: xs: concatLists (map f xs);
  concatMapStringsSep = sep: f: xs: concatStringsSep sep (map f xs);
  mapAttrsToList = f: as: map (n: f n as.${n}) (attrNames as);
  filterAttrs =
    pred: as:
    listToAttrs (
      concatMap (n: optional (pred n as.${n}) {
        name = n;
        value = as.${n};
      }) (attrNames as)
    );
  nameValuePair = name: value: { inherit name value; };
  hasPrefix = pre: s: substring 0 (stringLength pre) s == pre;
  hasSuffix =
    suf: s:
    let
      ls = stringLength s;
      lf = stringLength suf;
    in
    lf <= ls && substring (ls - lf) lf s == suf;
  last = xs: elemAt xs (length xs - 1);
  unique = foldl' (acc: x: if elem x acc then acc else acc ++ [ x ]) [ ];
  imap1 = f: xs: genList (i: f (i + 1) (elemAt xs i)) (length xs);
  isDerivation = x: isAttrs x && (x.type or null) == "derivation";
  isStringLike = x: isString x || isPath x || (isAttrs x && x ? outPath) || (isAttrs x && x ? __toString);
  # Quotes only what needs quoting, like nixpkgs.
  escapeShellArg =
    arg:
    let
      s = toString arg;
    in
    if match "[[:alnum:],._+:@%/-]+" s == null then "'" + replaceStrings [ "'" ] [ "'\\''" ] s + "'" else s;
  escapeShellArgs = concatMapStringsSep " " escapeShellArg;
  makeBinPath = pkgs: concatMapStringsSep ":" (p: "${p}/bin") pkgs;
  toInt =
    s:
    let
      m = match "[[:space:]]*(-?[0-9]+)[[:space:]]*" s;
    in
    if m == null then throw "toInt: ${toJSON s} is not an integer" else builtins.fromJSON (head m);
  showOption = loc: concatStringsSep "." loc;
  showDefs =
    defs: concatMapStringsSep "\n" (d: "  - In `${toString d.file}': ${builtins.toJSON (printable d.value)}") defs;
  # toJSON cannot print functions; show a placeholder instead of failing inside an error message.
  printable =
    v:
    if isFunction v then
      "<function>"
    else if isList v then
      map printable v
    else if isAttrs v && !(v ? outPath) then
      mapAttrs (_: printable) v
    else
      v;

  # ------------------------------------------------------------------ properties

  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
  mkOptionDefault = mkOverride 1500;
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  mkVMOverride = mkOverride 10;
  defaultOverridePriority = 100;

  literalExpression = text: {
    _type = "literalExpression";
    inherit text;
  };
  literalMD = text: {
    _type = "literalMD";
    inherit text;
  };

  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: mkOption {
    type = types.bool;
    default = false;
    example = true;
    description = "Whether to enable ${name}.";
  };
  isOption = x: isAttrs x && (x._type or null) == "option";

  # mkMerge and mkIf are pushed into attribute sets, so `mkIf c { a = 1; b = 2; }` becomes
  # `{ a = mkIf c 1; b = mkIf c 2; }` — the attribute names are evaluated, the condition is not.
  pushDownProperties =
    cfg:
    if (cfg._type or "") == "merge" then
      concatMap pushDownProperties cfg.contents
    else if (cfg._type or "") == "if" then
      map (mapAttrs (_: v: mkIf cfg.condition v)) (pushDownProperties cfg.content)
    else if (cfg._type or "") == "override" then
      map (mapAttrs (_: v: mkOverride cfg.priority v)) (pushDownProperties cfg.content)
    else
      [ cfg ];

  # Removes mkMerge and mkIf from one definition value; returns the list of remaining values.
  dischargeProperties =
    def:
    if (def._type or "") == "merge" then
      concatMap dischargeProperties def.contents
    else if (def._type or "") == "if" then
      if !isBool def.condition then
        throw "mkIf called with a non-Boolean condition"
      else if def.condition then
        dischargeProperties def.content
      else
        [ ]
    else
      [ def ];

  # Keeps only the definitions with the highest priority (the lowest number).
  filterOverrides =
    defs:
    let
      prio = d: if (d.value._type or "") == "override" then d.value.priority else defaultOverridePriority;
      best = foldl' (acc: d: if prio d < acc then prio d else acc) 9999 defs;
      strip = v: if (v._type or "") == "override" then strip v.content else v;
    in
    map (d: d // { value = strip d.value; }) (filter (d: prio d == best) defs);

  # The merged value of one option from its definitions (each { file, value }).
  # Returns { isDefined, value }.
  mergeDefinitions =
    loc: type: defs:
    let
      discharged = concatMap (d: map (v: d // { value = v; }) (dischargeProperties d.value)) defs;
      # an override can wrap mkIf/mkMerge in turn (mkDefault (mkIf c x))
      overridden = filterOverrides discharged;
      final = concatMap (d: map (v: d // { value = v; }) (dischargeProperties d.value)) overridden;
      badDefs = filter (d: !(type.check d.value)) final;
    in
    {
      isDefined = final != [ ];
      value =
        if final == [ ] then
          throw "The option `${showOption loc}' is used but not defined."
        else if badDefs != [ ] then
          throw "A definition for option `${showOption loc}' is not of type `${type.description}'. Definition values:\n${showDefs badDefs}"
        else
          type.merge loc final;
    };

  mergeEqualOption =
    loc: defs:
    let
      first = head defs;
    in
    if all (d: d.value == first.value) (tail defs) then
      first.value
    else
      throw "The option `${showOption loc}' has conflicting definition values:\n${showDefs defs}";

  # ------------------------------------------------------------------ types

  mkOptionType =
    {
      name,
      description ? name,
      check ? (_: true),
      merge ? mergeEqualOption,
      nestedTypes ? { },
      getSubOptions ? (_: { }),
    }:
    {
      _type = "option-type";
      inherit
        name
        description
        check
        merge
        nestedTypes
        getSubOptions
        ;
    };

  ints = rec {
    between =
      lo: hi:
      mkOptionType {
        name = "intBetween";
        description = "integer between ${toString lo} and ${toString hi} (both inclusive)";
        check = x: isInt x && x >= lo && x <= hi;
      };
    positive = mkOptionType {
      name = "positiveInt";
      description = "positive integer, meaning >0";
      check = x: isInt x && x > 0;
    };
    unsigned = mkOptionType {
      name = "unsignedInt";
      description = "unsigned integer, meaning >=0";
      check = x: isInt x && x >= 0;
    };
    u16 = between 0 65535 // {
      name = "unsignedInt16";
      description = "16 bit unsigned integer; between 0 and 65535 (both inclusive)";
    };
  };

  types = rec {
    inherit ints;
    port = ints.u16;

    unspecified = mkOptionType {
      name = "unspecified";
      merge = loc: defs: if length defs == 1 then (head defs).value else mergeEqualOption loc defs;
    };

    # Lists concatenate, attribute sets merge recursively, anything else must agree.
    anything = mkOptionType {
      name = "anything";
      description = "anything";
      merge =
        loc: defs:
        let
          values = map (d: d.value) defs;
        in
        if all isList values then
          concatLists values
        else if all (v: isAttrs v && !(v ? outPath) && !(v ? _type)) values then
          mapAttrs (n: _: (mergeDefinitions (loc ++ [ n ]) anything (concatMap (d: optional (d.value ? ${n}) (d // { value = d.value.${n}; })) defs)).value) (foldl' (a: b: a // b) { } values)
        else
          mergeEqualOption loc defs;
    };

    bool = mkOptionType {
      name = "bool";
      description = "boolean";
      check = isBool;
    };
    int = mkOptionType {
      name = "int";
      description = "signed integer";
      check = isInt;
    };
    float = mkOptionType {
      name = "float";
      description = "floating point number";
      check = isFloat;
    };
    number = either int float // {
      name = "number";
      description = "signed integer or floating point number";
    };
    str = mkOptionType {
      name = "str";
      description = "string";
      check = isString;
    };
    nonEmptyStr = addCheck str (s: match "[[:space:]]*" s == null) // {
      name = "nonEmptyStr";
      description = "non-empty string";
    };
    strMatching =
      pattern:
      mkOptionType {
        name = "strMatching ${toJSON pattern}";
        description = "string matching the pattern ${pattern}";
        check = x: isString x && match pattern x != null;
      };
    lines = mkOptionType {
      name = "lines";
      description = "strings concatenated with \"\\n\"";
      check = isString;
      merge = _loc: defs: concatStringsSep "\n" (map (d: d.value) defs);
    };
    attrs = mkOptionType {
      name = "attrs";
      description = "attribute set";
      check = isAttrs;
      merge = _loc: defs: foldl' (a: d: a // d.value) { } defs;
    };
    path = mkOptionType {
      name = "path";
      description = "path";
      check = x: isStringLike x && substring 0 1 (toString x) == "/";
    };
    package = mkOptionType {
      name = "package";
      description = "package";
      check = x: isDerivation x || (isString x && hasPrefix builtins.storeDir x);
    };

    enum =
      values:
      mkOptionType {
        name = "enum";
        description = "one of ${concatMapStringsSep ", " toJSON values}";
        check = x: elem x values;
      };

    nullOr =
      elemType:
      mkOptionType {
        name = "nullOr";
        description = "null or ${elemType.description}";
        check = x: x == null || elemType.check x;
        merge =
          loc: defs:
          let
            nulls = filter (d: d.value == null) defs;
          in
          if nulls == defs then
            null
          else if nulls != [ ] then
            throw "The option `${showOption loc}' is defined both null and not null:\n${showDefs defs}"
          else
            elemType.merge loc defs;
        nestedTypes.elemType = elemType;
        getSubOptions = elemType.getSubOptions;
      };

    listOf =
      elemType:
      mkOptionType {
        name = "listOf";
        description = "list of ${elemType.description}";
        check = isList;
        merge =
          loc: defs:
          map (x: x.value) (
            filter (x: x.isDefined) (
              concatLists (
                imap1 (
                  n: def:
                  imap1 (
                    m: value:
                    mergeDefinitions (loc ++ [ "[definition ${toString n}-entry ${toString m}]" ]) elemType [
                      {
                        inherit (def) file;
                        inherit value;
                      }
                    ]
                  ) def.value
                ) defs
              )
            )
          );
        nestedTypes.elemType = elemType;
        getSubOptions = prefix: elemType.getSubOptions (prefix ++ [ "*" ]);
      };

    nonEmptyListOf =
      elemType:
      addCheck (listOf elemType) (l: l != [ ])
      // {
        name = "nonEmptyListOf";
        description = "non-empty list of ${elemType.description}";
      };

    attrsOf =
      elemType:
      mkOptionType {
        name = "attrsOf";
        description = "attribute set of ${elemType.description}";
        check = isAttrs;
        merge =
          loc: defs:
          let
            pushed = concatMap (d: map (v: d // { value = v; }) (pushDownProperties d.value)) defs;
            names = unique (concatMap (d: attrNames d.value) pushed);
            merged = map (n: {
              name = n;
              value = mergeDefinitions (loc ++ [ n ]) elemType (
                concatMap (d: optional (d.value ? ${n}) (d // { value = d.value.${n}; })) pushed
              );
            }) names;
          in
          mapAttrs (_: r: r.value) (listToAttrs (filter (r: r.value.isDefined) merged));
        nestedTypes.elemType = elemType;
        getSubOptions = prefix: elemType.getSubOptions (prefix ++ [ "<name>" ]);
      };

    either =
      t1: t2:
      mkOptionType {
        name = "either";
        description = "${t1.description} or ${t2.description}";
        check = x: t1.check x || t2.check x;
        merge =
          loc: defs:
          let
            values = map (d: d.value) defs;
          in
          if all t1.check values then
            t1.merge loc defs
          else if all t2.check values then
            t2.merge loc defs
          else
            mergeEqualOption loc defs;
      };
    oneOf = ts: foldl' either (head ts) (tail ts);

    addCheck = elemType: check: elemType // { check = x: elemType.check x && check x; };

    submodule =
      module:
      mkOptionType {
        name = "submodule";
        description = "submodule";
        check = x: isAttrs x || isFunction x;
        merge =
          loc: defs:
          (evalModules {
            modules = [ module ] ++ map (d: {
              _file = d.file;
              config = d.value;
            }) defs;
            specialArgs.name = last loc;
            prefix = loc;
          }).config;
        getSubOptions =
          prefix:
          (evalModules {
            modules = [ module ];
            specialArgs.name = "<name>";
            inherit prefix;
          }).options;
      };
  };
  inherit (types) addCheck either;

  # ------------------------------------------------------------------ evalModules

  # Turns a module (path, function or attribute set) into { file, options, config, imports }.
  normalizeModule =
    args: file: m:
    let
      fromPath = isPath m || (isString m && hasPrefix "/" m);
      value0 = if fromPath then import m else m;
      file' = if fromPath then toString m else file;
      value = if isFunction value0 then value0 args else value0;
      structured = value ? options || value ? config;
      extra = removeAttrs value [
        "imports"
        "options"
        "config"
        "_file"
        "key"
        "meta"
      ];
    in
    if structured && extra != { } then
      throw "Module `${file'}' has an unsupported attribute `${head (attrNames extra)}'. This is caused by introducing a top-level `config' or `options' attribute. Add configuration attributes immediately on the top level instead, or move all of them (namely: ${head (attrNames extra)}) into the explicit `config' attribute."
    else
      {
        file = value._file or file';
        imports = value.imports or [ ];
        options = value.options or { };
        config =
          if structured then
            value.config or { }
          else
            removeAttrs value [
              "imports"
              "_file"
              "key"
              "meta"
            ];
      };

  collectModules =
    args: file: modules:
    concatMap (
      m:
      let
        n = normalizeModule args file m;
      in
      [ n ] ++ collectModules args n.file n.imports
    ) modules;

  # Merges the option declarations of all modules into one tree.
  mergeDeclarations =
    loc: decls:
    let
      names = unique (concatMap (d: attrNames d.value) decls);
      at = n: concatMap (d: optional (d.value ? ${n}) (d // { value = d.value.${n}; })) decls;
    in
    listToAttrs (
      map (
        n:
        let
          ds = at n;
          opts = filter (d: isOption d.value) ds;
        in
        nameValuePair n (
          if opts == [ ] then
            mergeDeclarations (loc ++ [ n ]) ds
          else if length ds > 1 then
            throw "The option `${showOption (loc ++ [ n ])}' is declared more than once, in ${concatMapStringsSep ", " (d: toString d.file) ds}."
          else
            (head opts).value
            // {
              loc = loc ++ [ n ];
              declarations = [ (head opts).file ];
            }
        )
      ) names
    );

  # The config value of an option subtree, from the definitions of all modules.
  evalNode =
    loc: node: defs:
    let
      pushed = concatMap (d: map (v: d // { value = v; }) (pushDownProperties d.value)) defs;
      notAttrs = filter (d: !(isAttrs d.value)) pushed;
      names = unique (concatMap (d: attrNames d.value) pushed);
      unknown = filter (n: !(node ? ${n})) names;
      defsOf = n: concatMap (d: optional (d.value ? ${n}) (d // { value = d.value.${n}; })) pushed;
      firstUnknown = head unknown;
    in
    if notAttrs != [ ] then
      throw "The option `${showOption loc}' is not an option but a group of options; it cannot be set to a value:\n${showDefs notAttrs}"
    else if unknown != [ ] then
      throw "The option `${showOption (loc ++ [ firstUnknown ])}' does not exist. Definition values:\n${showDefs (defsOf firstUnknown)}"
    else
      mapAttrs (
        n: sub:
        if isOption sub then
          evalOption (loc ++ [ n ]) sub (defsOf n)
        else
          evalNode (loc ++ [ n ]) sub (defsOf n)
      ) node;

  evalOption =
    loc: opt: defs:
    let
      type = opt.type or types.unspecified;
      defaultDefs = optional (opt ? default) {
        file = "the default of ${showOption loc}";
        value = mkOptionDefault opt.default;
      };
      merged = (mergeDefinitions loc type (defs ++ defaultDefs)).value;
    in
    if opt ? apply then opt.apply merged else merged;

  evalModules =
    {
      modules,
      specialArgs ? { },
      prefix ? [ ],
    }:
    let
      args = {
        inherit lib config options;
      }
      // specialArgs;
      collected = collectModules args "<unknown-file>" modules;
      options = mergeDeclarations prefix (
        map (m: {
          inherit (m) file;
          value = m.options;
        }) collected
      );
      config = evalNode prefix options (
        map (m: {
          inherit (m) file;
          value = m.config;
        }) collected
      );
      # Like nixpkgs, any access to the result checks that every definition (in every module,
      # under mkIf false too) names a declared option; modules themselves see the unchecked
      # config, so a check can never recurse into itself.
      unmatched = findUnmatched prefix options (
        map (m: {
          inherit (m) file;
          value = m.config;
        }) collected
      );
    in
    {
      config = if unmatched == null then config else throw unmatched;
      inherit options;
    };

  # The first definition of an option that does not exist, as an error message, or null.
  findUnmatched =
    loc: node: defs:
    let
      pushed = concatMap (d: map (v: d // { value = v; }) (pushDownProperties d.value)) (
        filter (d: isAttrs d.value) defs
      );
      names = unique (concatMap (d: attrNames d.value) pushed);
      defsOf = n: concatMap (d: optional (d.value ? ${n}) (d // { value = d.value.${n}; })) pushed;
      check =
        acc: n:
        if acc != null then
          acc
        else if !(node ? ${n}) then
          "The option `${showOption (loc ++ [ n ])}' does not exist. Definition values:\n${showDefs (defsOf n)}"
        else if isOption node.${n} then
          null
        else
          findUnmatched (loc ++ [ n ]) node.${n} (defsOf n);
    in
    foldl' check null names;

  # Lists every option below a declaration tree, descending into submodules, for documentation:
  # { name = "a.b.*.c"; type; default?; defaultText?; example?; description; readOnly?; internal? }.
  optionsToList =
    tree:
    concatMap (
      n:
      let
        v = tree.${n};
      in
      if isOption v then
        let
          type = v.type or types.unspecified;
          sub = type.getSubOptions v.loc;
        in
        [
          (
            {
              name = showOption v.loc;
              type = type.description;
              description = v.description or "";
              internal = v.internal or false;
              readOnly = v.readOnly or false;
            }
            // optionalAttrs (v ? default) { inherit (v) default; }
            // optionalAttrs (v ? defaultText) { inherit (v) defaultText; }
            // optionalAttrs (v ? example) { inherit (v) example; }
          )
        ]
        ++ optionsToList sub
      else if isAttrs v then
        optionsToList v
      else
        [ ]
    ) (attrNames tree);

  lib = {
    inherit
      id
      optional
      optionals
      optionalAttrs
      optionalString
      concatMap
      concatMapStringsSep
      concatStringsSep
      mapAttrsToList
      filterAttrs
      nameValuePair
      hasPrefix
      hasSuffix
      last
      unique
      imap1
      isDerivation
      isStringLike
      escapeShellArg
      escapeShellArgs
      makeBinPath
      toInt
      showOption
      mkIf
      mkMerge
      mkOverride
      mkOptionDefault
      mkDefault
      mkForce
      mkVMOverride
      literalExpression
      literalMD
      mkOption
      mkEnableOption
      mkOptionType
      isOption
      types
      evalModules
      optionsToList
      ;
    inherit (builtins)
      all
      any
      attrNames
      attrValues
      elem
      filter
      head
      length
      match
      replaceStrings
      toJSON
      ;
    # lib.options.showOption etc. are reached under `lib.options` in nixpkgs too.
    options = { inherit showOption mkOption; };
    modules = { inherit evalModules; };
    strings = { inherit hasPrefix hasSuffix escapeShellArg escapeShellArgs; };
    lists = { inherit optional optionals unique last; };
    attrsets = { inherit optionalAttrs filterAttrs mapAttrsToList; };
    trivial = { inherit id; };
  };
in
lib
